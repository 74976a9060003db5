//! `/metrics`, `/healthz` and `/readyz`, served the same way by the operator
//! and the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::Shutdown;

/// Renders the Prometheus text exposition.
pub type Encoder = Arc<dyn Fn() -> String + Send + Sync>;

/// Whether the process is ready; `/readyz` answers 503 until it is.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Mark ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Probes {
    encode: Encoder,
    ready: Readiness,
}

/// The probe and metrics routes.
pub fn router(encode: Encoder, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Probes { encode, ready })
}

/// Serve `router` on `addr` until shutdown.
pub async fn serve(addr: SocketAddr, router: Router, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .with_context(|| format!("http server on {addr}"))
}

async fn metrics(State(p): State<Probes>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (p.encode)(),
    )
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
