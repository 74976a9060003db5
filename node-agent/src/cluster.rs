//! One node's agent in a cluster: follows the node's ResourceProfile and the
//! InferenceDeployments placed on it, runs the node core (policy, VRAM
//! ledger, gates, pipelines, servers) and reports the GpuNode. `gogrid-agent
//! run` runs one; `gogrid-agent hollow` runs many in one process, each with
//! its own client and watches, through this same code.

use std::sync::Arc;
use std::time::Duration;

use gogrid_runtime::Shutdown;
use gogrid_runtime::http::Readiness;

use crate::config::Identity;
use crate::gpu::Inventory;
use crate::metrics::Metrics;
use crate::{node, sync};

/// Everything one node's agent runs with.
pub struct NodeRun {
    /// Its client (its own connections to the API server).
    pub client: kube::Client,
    /// Who it is.
    pub identity: Identity,
    /// Its GPUs.
    pub inventory: Arc<dyn Inventory>,
    /// Where its inference servers listen (none for a hollow node).
    pub listen: Option<node::Listen>,
    /// No model behind its versions, no servers.
    pub hollow: bool,
    /// GpuNode heartbeat when nothing changes.
    pub heartbeat: Duration,
    /// How often request counts go to the GpuNode.
    pub stats_every: Duration,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Set once its GpuNode is reported.
    pub ready: Readiness,
    /// Fires when it should report itself not ready (a stop signal).
    pub draining: Shutdown,
    /// Fires when it should stop.
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for NodeRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRun")
            .field("identity", &self.identity)
            .field("hollow", &self.hollow)
            .finish_non_exhaustive()
    }
}

/// Runs one node's agent until `shutdown`.
pub async fn run_node(n: NodeRun) -> anyhow::Result<()> {
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(None);
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(Vec::new());
    let (outputs, reports) = node::Outputs::channel(n.inventory.as_ref());
    let profile_task = sync::profile::follow(
        n.client.clone(),
        n.identity.profile.clone(),
        policy_tx,
        n.shutdown.clone(),
    );
    let deployments_task = sync::deployments::follow(
        n.client.clone(),
        n.identity.node.clone(),
        desired_tx,
        n.shutdown.clone(),
    );
    let node_task = node::run(
        node::Inputs {
            inventory: n.inventory.clone(),
            policy: policy_rx.clone(),
            desired: desired_rx,
            stats_every: n.stats_every,
            hollow: n.hollow,
        },
        n.listen,
        n.metrics.clone(),
        outputs,
        n.shutdown.clone(),
    );
    let reporter =
        sync::gpunode::Reporter::new(n.client, n.identity, n.inventory, n.metrics).hollow(n.hollow);
    let report_task = reporter.run(
        sync::gpunode::Feeds {
            policy: policy_rx,
            pipelines: reports.pipelines,
            priority: reports.priority,
            gpus: reports.gpus,
        },
        n.heartbeat,
        n.ready,
        n.draining,
        n.shutdown,
    );
    tokio::try_join!(profile_task, deployments_task, node_task, report_task)?;
    Ok(())
}
