//! Reports the node in its GpuNode: created once with the Node as owner (so it
//! goes with the node), its status written when something changed and on a
//! slow heartbeat, never more than once per change.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gogrid_crds::gpu_node::{AgentInfo, GpuInfo, GpuNodeSpec, GpuNodeStatus, PipelineStatus};
use gogrid_crds::labels::AGENT_MANAGER;
use gogrid_crds::{EffectivePolicy, GpuNode};
use gogrid_runtime::Shutdown;
use gogrid_runtime::http::Readiness;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Identity;
use crate::gpu::{Inventory, none::host_memory_bytes};
use crate::metrics::Metrics;
use crate::policy::budget::budgets;

/// How often the heartbeat is checked (the inventory comes from the node
/// core, which reads it once for budgets, back-off and this report).
const POLL: Duration = Duration::from_secs(5);

/// How long a change waits for more before it is written: a rollout edit
/// changes the pipelines in steps (split applied, version loaded, stats), and
/// one write carries them all. It also keeps the status writes of every agent
/// of a fleet out of the way while their splits are being applied.
const COALESCE: Duration = Duration::from_millis(100);

/// What the report is made of, each as the node core publishes it.
#[derive(Debug)]
pub struct Feeds {
    /// The policy in force.
    pub policy: watch::Receiver<Option<EffectivePolicy>>,
    /// The pipelines.
    pub pipelines: watch::Receiver<Vec<PipelineStatus>>,
    /// The `ProcessPriority` condition.
    pub priority: watch::Receiver<Option<gogrid_crds::conditions::Desired>>,
    /// The GPUs as last read.
    pub gpus: watch::Receiver<Vec<GpuInfo>>,
}

/// Writes this node's GpuNode.
pub struct Reporter {
    client: kube::Client,
    identity: Identity,
    inventory: Arc<dyn Inventory>,
    metrics: Arc<Metrics>,
    hollow: bool,
}

/// The status this agent reports, heartbeat aside.
pub fn status(
    identity: &Identity,
    inventory: &dyn Inventory,
    gpus: &[GpuInfo],
    policy: Option<&EffectivePolicy>,
    host_memory: i64,
    pipelines: &[PipelineStatus],
) -> GpuNodeStatus {
    let gpus = gpus.to_vec();
    let budget = budgets(&gpus, host_memory, policy);
    GpuNodeStatus {
        agent: Some(AgentInfo {
            pod_name: identity.pod.clone(),
            pod_ip: identity.pod_ip.clone(),
            http_port: i32::from(identity.http_port),
            grpc_port: i32::from(identity.grpc_port),
            metrics_port: i32::from(identity.metrics_port),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            device: inventory.device().to_owned(),
        }),
        profile: identity.profile.clone(),
        simulated: inventory.simulated(),
        hollow: false,
        gpu_count: i32::try_from(gpus.len()).unwrap_or(i32::MAX),
        gpus,
        policy: policy.cloned(),
        budget: Some(budget),
        pipeline_count: i32::try_from(pipelines.len()).unwrap_or(i32::MAX),
        pipelines: pipelines.to_vec(),
        heartbeat_time: None,
        conditions: Vec::new(),
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("identity", &self.identity)
            .field("inventory", &self.inventory)
            .finish()
    }
}

impl Reporter {
    /// A reporter for this node.
    pub fn new(
        client: kube::Client,
        identity: Identity,
        inventory: Arc<dyn Inventory>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            identity,
            inventory,
            metrics,
            hollow: false,
        }
    }

    /// Reports the node as played by a hollow agent.
    pub fn hollow(mut self, hollow: bool) -> Self {
        self.hollow = hollow;
        self
    }

    async fn ensure_object(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get(&self.identity.node)
            .await
            .with_context(|| format!("reading Node {}", self.identity.node))?;
        let uid = node.metadata.uid.context("Node has no uid")?;
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.identity.node.clone(),
            uid,
            ..Default::default()
        };
        let mut object = GpuNode::new(
            &self.identity.node,
            GpuNodeSpec {
                node_name: self.identity.node.clone(),
            },
        );
        object.metadata.owner_references = Some(vec![owner]);
        let api: Api<GpuNode> = Api::all(self.client.clone());
        api.patch(
            &self.identity.node,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("creating GpuNode {}", self.identity.node))?;
        Ok(())
    }

    async fn write(&self, status: &GpuNodeStatus) -> anyhow::Result<()> {
        let mut status = status.clone();
        status.heartbeat_time = Some(Time(jiff::Timestamp::now()));
        let api: Api<GpuNode> = Api::all(self.client.clone());
        let patch =
            json!({"apiVersion": "gogrid.io/v1alpha1", "kind": "GpuNode", "status": status});
        api.patch_status(
            &self.identity.node,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .with_context(|| format!("writing GpuNode {} status", self.identity.node))?;
        self.metrics.gpunode_writes.inc();
        Ok(())
    }

    /// Report until shutdown. Once `draining` fires every pipeline is
    /// reported not ready, so that the operator takes this agent out of the
    /// EndpointSlices while it still answers.
    pub async fn run(
        self,
        feeds: Feeds,
        heartbeat: Duration,
        ready: Readiness,
        draining: Shutdown,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let Feeds {
            mut policy,
            mut pipelines,
            mut priority,
            mut gpus,
        } = feeds;
        let mut backoff = Duration::from_secs(1);
        while let Err(e) = self.ensure_object().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot create the GpuNode yet; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(30)),
                _ = shutdown.wait() => return Ok(()),
            }
        }
        let host_memory = host_memory_bytes();
        let mut last: Option<GpuNodeStatus> = None;
        let mut last_write = tokio::time::Instant::now();
        let mut poll = tokio::time::interval(POLL);
        loop {
            let current = policy.borrow_and_update().clone();
            let mut loaded = pipelines.borrow_and_update().clone();
            let is_draining = draining.is_shutting_down();
            if is_draining {
                for p in &mut loaded {
                    p.ready = false;
                    p.message = Some("draining: the agent is shutting down".to_owned());
                }
            }
            let inventory = gpus.borrow_and_update().clone();
            let mut desired = status(
                &self.identity,
                self.inventory.as_ref(),
                &inventory,
                current.as_ref(),
                host_memory,
                &loaded,
            );
            desired.hollow = self.hollow;
            if let Some(c) = priority.borrow_and_update().clone() {
                let previous = last.as_ref().map_or(&[][..], |l| &l.conditions[..]);
                desired.conditions =
                    gogrid_crds::conditions::merge(previous, &[c], None, jiff::Timestamp::now());
            }
            self.metrics.observe(&desired);
            let due = last_write.elapsed() >= heartbeat;
            if last.as_ref() != Some(&desired) || due {
                match self.write(&desired).await {
                    Ok(()) => {
                        if last.as_ref() != Some(&desired) {
                            tracing::info!(gpus = desired.gpu_count, budget = ?desired.budget.as_ref().map(|b| &b.vram_budget_human), "reported GpuNode");
                        }
                        last = Some(desired);
                        last_write = tokio::time::Instant::now();
                        ready.set(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "GpuNode write failed; will retry")
                    }
                }
            }
            let changed = tokio::select! {
                changed = policy.changed() => changed,
                changed = pipelines.changed() => changed,
                changed = priority.changed() => changed,
                changed = gpus.changed() => changed,
                _ = poll.tick() => continue,
                // Draining is reported at once: the operator takes the agent
                // out of the EndpointSlices on it.
                _ = draining.wait(), if !is_draining => continue,
                _ = shutdown.wait() => return Ok(()),
            };
            if changed.is_err() {
                shutdown.wait().await;
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(COALESCE) => {}
                _ = draining.wait(), if !is_draining => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::declared::Declared;
    use gogrid_crds::Preset;
    use gogrid_crds::policy::preset_policy;

    fn gpus_of(inv: &Declared) -> Vec<GpuInfo> {
        inv.read().expect("a declared inventory reads")
    }

    fn identity() -> Identity {
        Identity {
            node: "gg-node-1".into(),
            pod: "gogrid-agent-default-x".into(),
            pod_ip: "10.244.1.2".into(),
            profile: Some("default".into()),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
        }
    }

    #[test]
    fn a_declared_inventory_is_reported_as_simulated_with_the_budget_in_force() {
        let inv = Declared::parse("2x24Gi").expect("inventory");
        let p = preset_policy(Preset::Default);
        let s = status(&identity(), &inv, &gpus_of(&inv), Some(&p), 0, &[]);
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json["agent"]["podIP"], "10.244.1.2",
            "Kubernetes spells it podIP, as Pod status does"
        );
        assert!(s.simulated);
        assert_eq!(s.gpu_count, 2);
        let agent = s.agent.expect("agent");
        assert_eq!(
            (agent.pod_ip.as_str(), agent.http_port, agent.metrics_port),
            ("10.244.1.2", 8000, 8002)
        );
        let budget = s.budget.expect("budget");
        assert_eq!(budget.devices.len(), 2);
        assert_eq!(budget.vram_budget_bytes, 2 * ((24i64 << 30) * 70 / 100));
        assert_eq!(s.policy.map(|p| p.preset_in_force), Some(Preset::Default));
    }

    #[test]
    fn the_same_inputs_give_the_same_status_so_nothing_is_rewritten() {
        let inv = Declared::parse("24Gi").expect("inventory");
        let p = preset_policy(Preset::Aggressive);
        let a = status(&identity(), &inv, &gpus_of(&inv), Some(&p), 0, &[]);
        let b = status(&identity(), &inv, &gpus_of(&inv), Some(&p), 0, &[]);
        assert_eq!(a, b);
        let c = status(
            &identity(),
            &inv,
            &gpus_of(&inv),
            Some(&preset_policy(Preset::Conservative)),
            0,
            &[],
        );
        assert_ne!(a, c, "a policy change is a change");
    }
}
