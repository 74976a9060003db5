//! `/metrics`, `/healthz` and `/readyz`, served the same way by the operator
//! and the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::Shutdown;
use crate::metrics_auth::{MetricsAuth, Verdict};

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
    auth: Option<MetricsAuth>,
}

/// The probe and metrics routes. With `auth`, `/metrics` answers only
/// callers the API server authenticates and allows `get /metrics` (401 and
/// 403 otherwise); the probes stay open, as the kubelet calls them without a
/// token.
pub fn router(encode: Encoder, ready: Readiness, auth: Option<MetricsAuth>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Probes {
            encode,
            ready,
            auth,
        })
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

/// OpenMetrics to whoever asks for it (Prometheus does), the classic text
/// format (0.0.4) to everyone else: curl, `promtool check metrics`, older
/// scrapers. The Go client negotiates the same way.
async fn metrics(
    State(p): State<Probes>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Some(auth) = &p.auth {
        let header = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth.check(header).await {
            Verdict::Allowed => {}
            Verdict::Unauthenticated(why) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                    why,
                )
                    .into_response();
            }
            Verdict::Forbidden(why) => return (StatusCode::FORBIDDEN, why).into_response(),
            Verdict::Unavailable(why) => {
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
        }
    }
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = (p.encode)();
    if openmetrics {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_text_format(&text),
        )
            .into_response()
    }
}

/// The classic Prometheus text format of an OpenMetrics exposition: counter
/// families are named with their `_total` suffix, and `# UNIT` and `# EOF`
/// lines, which it does not have, are dropped.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn readyz(State(p): State<Probes>) -> impl IntoResponse {
    if p.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_and_openmetrics_lines_go() {
        let om = "# HELP jobs Jobs run.\n# TYPE jobs counter\njobs_total{a=\"b\"} 3\n# HELP wait Time waited.\n# TYPE wait gauge\n# UNIT wait seconds\nwait_seconds 0.5\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{a=\"b\"} 3\n# HELP wait Time waited.\n# TYPE wait gauge\nwait_seconds 0.5\n"
        );
    }
}
