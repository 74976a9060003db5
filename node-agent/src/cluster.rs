//! One node's agent in a cluster: follows the node's ResourceProfile and the
//! InferenceDeployments placed on it, runs the node core (policy, VRAM
//! ledger, gates, pipelines, servers) and reports the GpuNode. `gogrid-agent
//! run` runs one; `gogrid-agent hollow` runs many in one process through this
//! same code, each with its own client for its GpuNode, all on the process's
//! one set of [`Watches`].

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _};
use gogrid_runtime::Shutdown;
use gogrid_runtime::http::Readiness;
use tokio::sync::watch;

use crate::config::Identity;
use crate::gpu::Inventory;
use crate::metrics::Metrics;
use crate::{node, sync};

/// The watches every node of a process reads: one of every
/// InferenceDeployment and one per ResourceProfile named. A real agent has one
/// node on them, a hollow agent a thousand; either way the API server serves
/// one agent's watches, not one per node played.
#[derive(Clone, Debug)]
pub struct Watches {
    deployments: sync::deployments::SnapshotFeed,
    profiles: BTreeMap<String, sync::profile::SpecFeed>,
}

impl Watches {
    /// The watches for `profiles` (repeats are watched once), and the future
    /// that runs them until `shutdown`.
    pub fn start(
        client: kube::Client,
        profiles: impl IntoIterator<Item = String>,
        shutdown: Shutdown,
    ) -> (Self, impl Future<Output = anyhow::Result<()>>) {
        let (deployments_tx, deployments) = watch::channel(None);
        let mut tasks: Vec<BoxFuture<'static, anyhow::Result<()>>> = vec![
            sync::deployments::watch_all(client.clone(), deployments_tx, shutdown.clone()).boxed(),
        ];
        let mut feeds = BTreeMap::new();
        for name in profiles {
            if let Entry::Vacant(slot) = feeds.entry(name) {
                let (tx, rx) = watch::channel(None);
                let watch = sync::profile::watch_named(
                    client.clone(),
                    slot.key().clone(),
                    tx,
                    shutdown.clone(),
                );
                tasks.push(watch.boxed());
                slot.insert(rx);
            }
        }
        let run = async move {
            futures::future::try_join_all(tasks).await?;
            Ok(())
        };
        let watches = Self {
            deployments,
            profiles: feeds,
        };
        (watches, run)
    }

    /// The feed of `profile`, which `node` follows.
    fn profile(
        &self,
        profile: &str,
        node: &str,
    ) -> anyhow::Result<(String, sync::profile::SpecFeed)> {
        let feed = self
            .profiles
            .get(profile)
            .ok_or_else(|| anyhow::anyhow!("profile {profile:?} of node {node} is not watched"))?;
        Ok((profile.to_owned(), feed.clone()))
    }
}

/// Everything one node's agent runs with.
pub struct NodeRun {
    /// Its client (its own connection for its GpuNode).
    pub client: kube::Client,
    /// The process's watches it reads its profile and deployments from.
    pub watches: Watches,
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
    let profile = n
        .identity
        .profile
        .as_deref()
        .map(|name| n.watches.profile(name, &n.identity.node))
        .transpose()?;
    let profile_task = sync::profile::follow(profile, policy_tx, n.shutdown.clone());
    let deployments_task = sync::deployments::publish(
        n.identity.node.clone(),
        n.watches.deployments.clone(),
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
