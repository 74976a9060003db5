//! The agent's `/metrics`, `/healthz` and `/readyz` (ready once its GpuNode is
//! reported).

use std::net::SocketAddr;
use std::sync::Arc;

use gogrid_runtime::Shutdown;
use gogrid_runtime::http as probes;
pub use gogrid_runtime::http::Readiness;
use gogrid_runtime::metrics_auth::MetricsAuth;

use crate::metrics::Metrics;

/// Serve until shutdown.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Readiness,
    auth: Option<MetricsAuth>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let router = probes::router(Arc::new(move || metrics.encode()), ready, auth);
    probes::serve(addr, router, shutdown).await
}
