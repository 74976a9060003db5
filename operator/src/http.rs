//! `/metrics`, `/healthz` and `/readyz` of the operator. Every replica serves
//! them; only the leader reconciles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::{
    Router, extract::State as AxState, http::StatusCode, response::IntoResponse, routing::get,
};

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// What the endpoints report.
#[derive(Clone, Debug)]
pub struct State {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl State {
    /// Fresh state: not ready until the caches have synced or a follower waits.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: Arc::default(),
        }
    }

    /// Mark the replica ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The router, for tests and for [`serve`].
pub fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serve until shutdown.
pub async fn serve(addr: SocketAddr, state: State, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .context("http server")
}

async fn metrics(AxState(state): AxState<State>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(AxState(state): AxState<State>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
