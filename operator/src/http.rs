//! The operator's `/metrics`, `/healthz` and `/readyz`. Every replica serves
//! them; only the leader reconciles. Ready once the caches are filled (leader)
//! or while waiting for the Lease (follower).

use std::net::SocketAddr;
use std::sync::Arc;

use gogrid_runtime::Shutdown;
use gogrid_runtime::http::{self as probes, Readiness};
use gogrid_runtime::metrics_auth::MetricsAuth;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone, Debug)]
pub struct State {
    metrics: Arc<Metrics>,
    ready: Readiness,
}

impl State {
    /// Fresh state, not ready.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: Readiness::default(),
        }
    }

    /// Mark the replica ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready);
    }
}

/// Serve until shutdown.
pub async fn serve(
    addr: SocketAddr,
    state: State,
    auth: Option<MetricsAuth>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics = state.metrics.clone();
    let router = probes::router(
        Arc::new(move || metrics.encode()),
        state.ready.clone(),
        auth,
    );
    probes::serve(addr, router, shutdown).await
}
