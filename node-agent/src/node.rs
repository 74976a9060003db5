//! The agent's node core, the one code path of in-cluster and standalone mode:
//! applies the policy in force (VRAM budgets to the ledger, throttle gate,
//! batching, adaptive share, process priority), keeps the pipelines equal to
//! what the node must serve, and serves them over REST and gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gogrid_crds::EffectivePolicy;
use gogrid_crds::conditions::Desired as Condition;
use gogrid_crds::gpu_node::{GpuInfo, PipelineStatus};
use gogrid_crds::policy::preset_policy;
use gogrid_runtime::Shutdown;
use gogrid_serve::{BatchPolicy, Limits, Registry, ServeState};
use tokio::sync::watch;

use crate::channel::send_if_changed;
use crate::gpu::{Inventory, none::host_memory_bytes};
use crate::metrics::Metrics;
use crate::pipeline::admission::{ADMISSION_DEADLINE, GateAdmission};
use crate::pipeline::manager::Manager;
use crate::policy::adaptive::Backoff;
use crate::policy::budget::budgets;
use crate::policy::ledger::{Device, Ledger};
use crate::policy::priority;
use crate::policy::throttle::Gates;
use crate::sync::deployments::Desired;

/// How often the inventory is re-read for budgets and adaptive back-off.
const POLL: Duration = Duration::from_secs(5);

/// Where the inference servers listen.
#[derive(Clone, Debug)]
pub struct Listen {
    /// REST.
    pub http: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// Bind only once this is set (or after [`BIND_AT_THE_LATEST`]): in a
    /// cluster, once the GpuNode has said what this process serves. An agent
    /// that restarts after a crash would otherwise answer 404 for its models
    /// while the EndpointSlices still list it as ready from its previous
    /// life; until it binds, a connection is refused and the client sends
    /// the request elsewhere.
    pub after: Option<gogrid_runtime::http::Readiness>,
}

/// The longest the servers wait for [`Listen::after`] (the API server may be
/// down: the node must serve anyway).
pub const BIND_AT_THE_LATEST: Duration = Duration::from_secs(10);

/// What the node core is fed.
#[derive(Debug)]
pub struct Inputs {
    /// The node's GPUs.
    pub inventory: Arc<dyn Inventory>,
    /// The policy in force.
    pub policy: watch::Receiver<Option<EffectivePolicy>>,
    /// The deployments to serve.
    pub desired: watch::Receiver<Vec<Desired>>,
    /// How often each version's request counts go to the GpuNode (canary
    /// analysis reads them).
    pub stats_every: Duration,
    /// A hollow node: versions are registered, routed and reported with no
    /// model behind them, and no server listens (`gogrid-agent hollow`).
    pub hollow: bool,
}

fn batch_policy(p: &EffectivePolicy) -> BatchPolicy {
    BatchPolicy {
        max_batch_size: usize::try_from(p.max_batch_size.max(1)).unwrap_or(1),
        max_queue_delay: Duration::from_millis(u64::from(p.max_queue_delay_ms)),
        ..BatchPolicy::default()
    }
}

/// What the node core reports: the pipelines' status and the process
/// priority's condition.
#[derive(Debug)]
pub struct Outputs {
    /// The pipelines.
    pub pipelines: watch::Sender<Vec<PipelineStatus>>,
    /// The `ProcessPriority` condition, once a policy was applied.
    pub priority: watch::Sender<Option<Condition>>,
    /// The GPUs as last read (the one reader of the inventory).
    pub gpus: watch::Sender<Vec<GpuInfo>>,
}

/// The receiving ends of [`Outputs`]: what the GpuNode reporter (or the
/// standalone log) reads.
#[derive(Debug)]
pub struct Reports {
    /// The pipelines.
    pub pipelines: watch::Receiver<Vec<PipelineStatus>>,
    /// The `ProcessPriority` condition.
    pub priority: watch::Receiver<Option<Condition>>,
    /// The GPUs as last read.
    pub gpus: watch::Receiver<Vec<GpuInfo>>,
}

impl Outputs {
    /// The node core's outputs and their receivers: no pipelines, no
    /// condition, and the GPUs as first read from `inventory`. The first
    /// GpuNode report (written before the node core binds its servers, which
    /// is before it reads the inventory again) then carries the node's GPUs,
    /// not an empty list that says the node has none.
    pub fn channel(inventory: &dyn Inventory) -> (Self, Reports) {
        let (pipelines, pipelines_rx) = watch::channel(Vec::new());
        let (priority, priority_rx) = watch::channel(None);
        let (gpus, gpus_rx) = watch::channel(read_gpus(inventory));
        (
            Self {
                pipelines,
                priority,
                gpus,
            },
            Reports {
                pipelines: pipelines_rx,
                priority: priority_rx,
                gpus: gpus_rx,
            },
        )
    }
}

/// The node's GPUs, none (with a warning) when the inventory is unreadable.
fn read_gpus(inventory: &dyn Inventory) -> Vec<GpuInfo> {
    inventory.read().unwrap_or_else(|e| {
        tracing::warn!(error = format!("{e:#}"), "GPU inventory unreadable");
        Vec::new()
    })
}

/// Run the node core until shutdown.
pub async fn run(
    inputs: Inputs,
    listen: Option<Listen>,
    metrics: Arc<Metrics>,
    outputs: Outputs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Outputs {
        pipelines,
        priority: priority_tx,
        gpus: gpus_tx,
    } = outputs;
    let Inputs {
        inventory,
        mut policy,
        desired,
        stats_every,
        hollow,
    } = inputs;
    let host_memory = host_memory_bytes();
    // The GPUs as `Outputs::channel` read them: one read at start-up.
    let gpus = gpus_tx.borrow().clone();
    let initial = policy.borrow().clone();
    // The ledger's devices are the node's (host memory without GPUs); their
    // budgets are zero until a policy says otherwise.
    let careful = preset_policy(gogrid_crds::Preset::Conservative);
    let devices = budgets(&gpus, host_memory, Some(&careful));
    let ledger = Arc::new(Ledger::from_budget(&devices));
    for d in &devices.devices {
        ledger.set_budget(Device::from_index(d.index), 0);
    }
    ledger.apply_budget(&budgets(&gpus, host_memory, initial.as_ref()));
    // Until a policy arrives requests are gated by the most careful preset.
    let gates = Arc::new(Gates::new(
        devices.devices.iter().map(|d| Device::from_index(d.index)),
        initial.as_ref().unwrap_or(&careful),
    ));
    let (batch_tx, batch_rx) = watch::channel(batch_policy(initial.as_ref().unwrap_or(&careful)));
    let admission = Arc::new(GateAdmission::new(
        gates.clone(),
        ledger.clone(),
        ADMISSION_DEADLINE,
    ));
    let registry = Arc::new(Registry::new(
        batch_rx,
        admission.clone(),
        metrics.serving.clone(),
    ));

    if let Some(p) = initial.as_ref() {
        priority_tx.send_replace(Some(priority::condition(&priority::apply(p))));
    }
    let placement = inventory.clone();
    let apply = {
        let (ledger, gates, shutdown) = (ledger.clone(), gates.clone(), shutdown.clone());
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            let mut backoff = Backoff::new(None);
            let mut poll = tokio::time::interval(POLL);
            loop {
                let current = policy.borrow_and_update().clone();
                let gpus = read_gpus(inventory.as_ref());
                send_if_changed(&gpus_tx, &gpus);
                ledger.apply_budget(&budgets(&gpus, host_memory, current.as_ref()));
                if let Some(p) = &current {
                    gates.update(p);
                    send_if_changed(&batch_tx, &batch_policy(p));
                    backoff.update(p.adaptive.as_ref());
                    let others = gpus
                        .iter()
                        .map(|g| g.other_processes_utilization_percent)
                        .max()
                        .unwrap_or(0);
                    gates.set_share(backoff.sample(started.elapsed(), others));
                }
                metrics.observe_policy(&gates, &ledger);
                tokio::select! {
                    changed = policy.changed() => {
                        if changed.is_err() { return anyhow::Ok(()); }
                        if let Some(p) = policy.borrow().as_ref() {
                            priority_tx.send_replace(Some(priority::condition(&priority::apply(p))));
                        }
                    }
                    _ = poll.tick() => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        }
    };

    let mut manager = Manager::new(registry.clone(), ledger, admission, pipelines, placement)
        .with_stats_every(stats_every)
        .with_split_metrics(metrics.split.clone());
    if hollow {
        manager = manager.hollow();
    }
    let Some(listen) = listen else {
        tokio::try_join!(apply, manager.run(desired, shutdown.clone()))?;
        return Ok(());
    };
    let state = ServeState::new(registry, Limits::default());
    if let Some(reported) = &listen.after {
        let deadline = Instant::now() + BIND_AT_THE_LATEST;
        while !reported.get() && Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }
    let http = tokio::net::TcpListener::bind(listen.http)
        .await
        .with_context(|| format!("binding the REST server to {}", listen.http))?;
    let grpc = tokio::net::TcpListener::bind(listen.grpc)
        .await
        .with_context(|| format!("binding the gRPC server to {}", listen.grpc))?;
    tracing::info!(http = %listen.http, grpc = %listen.grpc, "inference servers listening");
    let http_task = {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            gogrid_serve::serve_http(http, state, async move { shutdown.wait().await })
                .await
                .context("REST server")
        }
    };
    let grpc_task = {
        let shutdown = shutdown.clone();
        async move {
            gogrid_serve::serve_grpc(grpc, state, async move { shutdown.wait().await })
                .await
                .context("gRPC server")
        }
    };
    tokio::try_join!(
        apply,
        manager.run(desired, shutdown.clone()),
        http_task,
        grpc_task
    )?;
    Ok(())
}

/// The CPU kernels this build runs: candle's fast quantized kernels (Q4_0,
/// Q8_0, K-quants) exist only when AVX2 is enabled at compile time.
pub fn kernels() -> &'static str {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        "cpu-avx2-fma (candle's fast Q4_0/Q8_0/K-quant kernels)"
    } else {
        "cpu-generic (slow quantized kernels: build with -C target-cpu=x86-64-v3)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::declared::Declared;

    #[test]
    fn the_gpus_are_reported_as_read_before_the_node_core_runs() {
        let inventory = Declared::parse("2x24Gi").expect("inventory");
        let (_outputs, reports) = Outputs::channel(&inventory);
        let gpus = reports.gpus.borrow();
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        assert!(gpus.iter().all(|g| g.memory_total_bytes == 24 << 30));
    }
}
