//! Keeps the loaded model versions equal to what the node must serve: loads
//! new versions (weights reserved in the VRAM ledger first, candle on a
//! blocking thread), registers them with the serving layer, routes unversioned
//! requests by the split, unloads what is no longer wanted, and publishes the
//! pipelines' status. A failed load leaves the version already serving alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gogrid_crds::gpu_node::{LatencySummary, PipelineStatus, StageStatus};
use gogrid_crds::inference_deployment::{
    ModelFormat, ModelSpec, ModelTask, PipelineSpec, TrafficSplit,
};
use gogrid_pipeline::{DeviceBudget, ExplicitStage, Format, LoadSpec, Requantize, Task};
use gogrid_runtime::Shutdown;
use gogrid_serve::Registry;
use tokio::sync::watch;

use super::admission::{Footprint, GateAdmission};
use super::backend::ModelBackend;
use super::split::WeightedSplit;
use crate::channel::send_if_changed;
use crate::gpu::Inventory;
use crate::policy::ledger::{Device, Ledger, Reservation, Use};
use crate::sync::deployments::{DeploymentKey, Desired};

/// `PipelineStatus.reason` of a version the node's budget cannot hold.
pub const REASON_VRAM: &str = "InsufficientVram";
/// `PipelineStatus.reason` of a deployment whose model name another serves here.
pub const REASON_NAME_TAKEN: &str = "ModelNameTaken";
/// `PipelineStatus.reason` of any other failed load.
pub const REASON_LOAD: &str = "LoadFailed";

/// A failed load: its [`PipelineStatus::reason`] and the message.
type LoadFailure = (&'static str, String);

/// How often failed loads are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// How often the versions' request counts and latency are published, unless
/// told otherwise.
pub const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One loaded (or failed) model version.
#[derive(Debug)]
struct Entry {
    model: ModelSpec,
    status: PipelineStatus,
    /// Weights held in the ledger while loaded, one per stage.
    _reservations: Vec<Reservation>,
}

/// The pipelines of this node.
#[derive(Debug)]
pub struct Manager {
    registry: Arc<Registry>,
    admission: Arc<GateAdmission>,
    ledger: Arc<Ledger>,
    entries: BTreeMap<(DeploymentKey, String), Entry>,
    splits: BTreeMap<String, Arc<WeightedSplit>>,
    status: watch::Sender<Vec<PipelineStatus>>,
    inventory: Arc<dyn Inventory>,
    stats_every: std::time::Duration,
    /// How fast splits take effect.
    split_metrics: Option<crate::metrics::SplitMetrics>,
    /// A hollow agent: versions are registered, routed and reported without
    /// a model behind them.
    hollow: bool,
}

/// A version ready to register: what serves it, where its layers are, what
/// each batch item needs, and the VRAM it holds.
struct Ready {
    backend: Arc<dyn gogrid_serve::Backend>,
    stages: Vec<gogrid_pipeline::StageInfo>,
    per_item_bytes: u64,
    reservations: Vec<Reservation>,
}

/// The devices a load is offered: ledger devices (none: the CPU, unaccounted)
/// with their free bytes, and the explicit stages over them.
#[derive(Debug, Default)]
struct Offer {
    devices: Vec<(Option<Device>, DeviceBudget)>,
    stages: Vec<ExplicitStage>,
}

/// The weights file a model spec names, as the agent sees it.
pub fn weights_path(model: &ModelSpec) -> Result<PathBuf, String> {
    let s = &model.source;
    match (&s.path, &s.host_path, &s.pvc) {
        (Some(p), _, _) | (_, Some(p), _) => Ok(PathBuf::from(p)),
        (_, _, Some(pvc)) => Err(format!(
            "model.source.pvc ({}): PVC sources are not mounted into agents yet; put the weights in the agents' model volume and use model.source.path",
            pvc.claim_name
        )),
        _ => Err("model.source names no weights".to_owned()),
    }
}

fn load_spec(model: &ModelSpec, offer: &Offer) -> Result<LoadSpec, String> {
    Ok(LoadSpec {
        path: weights_path(model)?,
        format: match model.format {
            ModelFormat::Gguf => Format::Gguf,
            ModelFormat::Safetensors => Format::Safetensors,
        },
        task: match model.task {
            ModelTask::Embedding => Task::Embedding,
            ModelTask::TextGeneration => Task::TextGeneration,
        },
        sha256: model.sha256.clone(),
        devices: offer.devices.iter().map(|(_, d)| d.clone()).collect(),
        stages: offer.stages.clone(),
        requantize: Requantize::default(),
    })
}

impl Manager {
    /// A manager serving through `registry` within `ledger`.
    pub fn new(
        registry: Arc<Registry>,
        ledger: Arc<Ledger>,
        admission: Arc<GateAdmission>,
        status: watch::Sender<Vec<PipelineStatus>>,
        inventory: Arc<dyn Inventory>,
    ) -> Self {
        Self {
            registry,
            admission,
            ledger,
            entries: BTreeMap::new(),
            splits: BTreeMap::new(),
            status,
            inventory,
            stats_every: STATS_EVERY,
            split_metrics: None,
            hollow: false,
        }
    }

    /// Makes this the manager of a hollow agent (`gogrid-agent hollow`).
    pub fn hollow(mut self) -> Self {
        self.hollow = true;
        self
    }

    /// Records in `metrics` the seconds from a change of the wanted
    /// deployments to the new split routing requests, and when it did.
    pub fn with_split_metrics(mut self, metrics: crate::metrics::SplitMetrics) -> Self {
        self.split_metrics = Some(metrics);
        self
    }

    /// Publishes request counts every `every` instead of [`STATS_EVERY`].
    pub fn with_stats_every(mut self, every: std::time::Duration) -> Self {
        self.stats_every = every.max(std::time::Duration::from_secs(1));
        self
    }

    /// Follow `desired` until shutdown.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Vec<Desired>>,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        // Failed loads are retried: the budget may have grown (a policy that
        // arrived, a window that started, another process that left) or the
        // file may have appeared.
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What each version served goes to status on this tick (only when it
        // changed: an idle node writes nothing).
        let mut stats = tokio::time::interval(self.stats_every);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wanted = desired.borrow_and_update().clone();
        self.reconcile(&wanted, Instant::now()).await;
        loop {
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let seen = Instant::now();
                    wanted = desired.borrow_and_update().clone();
                    self.reconcile(&wanted, seen).await;
                }
                _ = retry.tick() => self.reconcile(&wanted, Instant::now()).await,
                _ = stats.tick() => self.publish(&wanted),
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    async fn reconcile(&mut self, wanted: &[Desired], seen: Instant) {
        // Load what is missing or changed, before unloading anything.
        for d in wanted.iter().filter(|d| d.refused.is_none()) {
            for model in d.versions() {
                let id = (d.key.clone(), model.version.clone());
                let current = self.entries.get(&id);
                // Loaded with this spec: nothing to do. Failed with it: retried.
                if current.is_some_and(|e| e.model == *model && e.status.ready) {
                    continue;
                }
                self.load(&d.key, model, d.spec.pipeline.as_ref()).await;
            }
            if self.route(&d.spec.model.name, &d.traffic)
                && let Some(m) = &self.split_metrics
            {
                m.apply.observe(seen.elapsed().as_secs_f64());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                m.applied_at
                    .get_or_create(&crate::metrics::DeploymentLabels {
                        namespace: d.key.namespace.clone(),
                        deployment: d.key.name.clone(),
                    })
                    .set(now);
                if let Ok(mut last) = m.last_applied.lock() {
                    last.insert(d.key.to_string(), now);
                }
            }
        }
        // Unload versions no longer wanted.
        let keep: Vec<(DeploymentKey, String)> = wanted
            .iter()
            .filter(|d| d.refused.is_none())
            .flat_map(|d| {
                d.versions()
                    .into_iter()
                    .map(|m| (d.key.clone(), m.version.clone()))
            })
            .collect();
        let gone: Vec<_> = self
            .entries
            .keys()
            .filter(|id| !keep.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(entry) = self.entries.remove(&id) {
                // The registry is keyed by model name and version: a deployment
                // that took over the name (the old one deleted, a new one
                // created) has registered its own backend there already.
                let taken_over = self
                    .entries
                    .iter()
                    .any(|((_, version), e)| e.model.name == entry.model.name && *version == id.1);
                if !taken_over {
                    self.registry.remove(&entry.model.name, &id.1);
                    self.admission.set_footprint(&entry.model.name, &id.1, None);
                }
                tracing::info!(deployment = %id.0, version = %id.1, "unloaded");
            }
        }
        let models: Vec<String> = wanted
            .iter()
            .filter(|d| d.refused.is_none())
            .map(|d| d.spec.model.name.clone())
            .collect();
        self.splits.retain(|m, _| models.contains(m));
        self.publish(wanted);
    }

    async fn load(
        &mut self,
        key: &DeploymentKey,
        model: &ModelSpec,
        pipeline: Option<&PipelineSpec>,
    ) {
        let id = (key.clone(), model.version.clone());
        let mut status = PipelineStatus {
            namespace: key.namespace.clone(),
            deployment: key.name.clone(),
            version: model.version.clone(),
            ..Default::default()
        };
        let ready = if self.hollow {
            self.hollow_load(model, pipeline)
        } else {
            self.try_load(model, pipeline).await
        };
        match ready {
            Ok(Ready {
                backend,
                stages,
                per_item_bytes,
                reservations,
            }) => {
                let name = &model.name;
                let replaced = self.entries.remove(&id).is_some();
                if replaced {
                    self.registry.remove(name, &model.version);
                }
                if let Some(r) = reservations.first() {
                    self.admission.set_footprint(
                        name,
                        &model.version,
                        Some(Footprint {
                            device: r.device(),
                            per_item_bytes,
                        }),
                    );
                }
                let added = self
                    .registry
                    .add(name, &model.version, backend)
                    .and_then(|()| self.registry.set_ready(name, &model.version, true));
                if let Err(e) = added {
                    status.message = Some(format!("registering the model failed: {e}"));
                    status.reason = Some(REASON_LOAD.to_owned());
                } else {
                    status.ready = true;
                    status.vram_bytes = reservations.iter().map(|r| r.bytes() as i64).sum();
                    status.stages = stages
                        .iter()
                        .map(|s| StageStatus {
                            gpu: s.device.strip_prefix("gpu").and_then(|i| i.parse().ok()),
                            first_layer: u32::try_from(s.first_layer).unwrap_or(u32::MAX),
                            last_layer: u32::try_from(s.last_layer).unwrap_or(u32::MAX),
                            vram_bytes: i64::try_from(s.bytes).unwrap_or(i64::MAX),
                        })
                        .collect();
                    tracing::info!(deployment = %key, model = %name, version = %model.version, bytes = status.vram_bytes, "loaded and serving");
                    if let Some(m) = &self.split_metrics {
                        m.loads
                            .get_or_create(&crate::metrics::VersionLabels {
                                namespace: key.namespace.clone(),
                                deployment: key.name.clone(),
                                version: model.version.clone(),
                            })
                            .inc();
                    }
                }
                self.entries.insert(
                    id,
                    Entry {
                        model: model.clone(),
                        status,
                        _reservations: reservations,
                    },
                );
            }
            Err((reason, message)) => {
                tracing::warn!(deployment = %key, version = %model.version, %message, "model not loaded");
                match self.entries.get_mut(&id) {
                    // A new spec for a version that serves: it keeps serving.
                    Some(entry) if entry.status.ready => {
                        entry.status.message = Some(format!(
                            "still serving the previous load: the new spec failed: {message}"
                        ));
                    }
                    _ => {
                        status.message = Some(message);
                        status.reason = Some(reason.to_owned());
                        self.entries.insert(
                            id,
                            Entry {
                                model: model.clone(),
                                status,
                                _reservations: Vec::new(),
                            },
                        );
                    }
                }
            }
        }
    }

    async fn try_load(
        &self,
        model: &ModelSpec,
        pipeline: Option<&PipelineSpec>,
    ) -> Result<Ready, LoadFailure> {
        let failed = |m: String| (REASON_LOAD, m);
        let offer = self.offer(pipeline).map_err(failed)?;
        let spec = load_spec(model, &offer).map_err(failed)?;
        let planned = gogrid_pipeline::plan_load(&spec).map_err(|e| {
            match &e {
                // What the devices offer is the room their VRAM budgets leave.
                gogrid_pipeline::LoadError::Plan(
                    gogrid_pipeline::PlanError::DoesNotFit { .. }
                    | gogrid_pipeline::PlanError::StageDoesNotFit { .. },
                ) => (
                    REASON_VRAM,
                    format!("refused: {e} (the room left in the VRAM budget)"),
                ),
                _ => (REASON_LOAD, e.to_string()),
            }
        })?;
        // Every stage's weights are reserved before anything is read; a
        // refusal drops the reservations already taken.
        let mut reservations = Vec::with_capacity(planned.len());
        for stage in &planned {
            let device = offer
                .devices
                .iter()
                .find(|(_, d)| d.name == stage.device)
                .and_then(|(ledger, _)| *ledger);
            let Some(device) = device else { continue };
            if let Some(free) = self.driver_free_bytes(device)
                && free < stage.bytes
            {
                return Err((
                    REASON_VRAM,
                    format!(
                        "refused: the CUDA driver reports {free} bytes free on {}, the stage of layers {}..={} needs {}",
                        stage.device, stage.first_layer, stage.last_layer, stage.bytes
                    ),
                ));
            }
            reservations.push(
                self.ledger
                    .try_reserve(device, stage.bytes, Use::Weights)
                    .map_err(|e| (REASON_VRAM, format!("refused: {e}")))?,
            );
        }
        let loaded = tokio::task::spawn_blocking(move || gogrid_pipeline::load(&spec))
            .await
            .map_err(|e| failed(format!("the load task failed: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
        let per_item_bytes = match &loaded {
            gogrid_pipeline::Loaded::Embedder(e) => e.request_bytes(e.max_tokens()),
            gogrid_pipeline::Loaded::Generator(g) => g.request_bytes(g.config().context_length),
        };
        Ok(Ready {
            stages: loaded.stages(),
            per_item_bytes,
            backend: Arc::new(ModelBackend::new(loaded)),
            reservations,
        })
    }

    /// A hollow agent's load: the device is chosen as for a real one (the
    /// same offer), nothing is read, nothing reserved.
    fn hollow_load(
        &self,
        model: &ModelSpec,
        pipeline: Option<&PipelineSpec>,
    ) -> Result<Ready, LoadFailure> {
        let offer = self.offer(pipeline).map_err(|m| (REASON_LOAD, m))?;
        let device = offer
            .devices
            .first()
            .map_or_else(|| "cpu".to_owned(), |(_, d)| d.name.clone());
        let task = match model.task {
            ModelTask::Embedding => gogrid_serve::TaskKind::Embedding,
            ModelTask::TextGeneration => gogrid_serve::TaskKind::TextGeneration,
        };
        Ok(Ready {
            backend: Arc::new(super::backend::HollowBackend::new(task)),
            stages: vec![gogrid_pipeline::StageInfo {
                device,
                first_layer: 0,
                last_layer: 0,
                bytes: 0,
            }],
            per_item_bytes: 0,
            reservations: Vec::new(),
        })
    }

    /// The devices a model may use on this node. A node without GPUs offers its
    /// CPU (budgeted against host memory). A GPU node offers the GPUs
    /// `pipeline.stages` names, in stage order, or else the
    /// `pipeline.gpusPerReplica` GPUs (default 1) with the most room, in index
    /// order; 0 GPUs runs on the CPU, outside the VRAM ledger. A GPU's stages
    /// compute through CUDA where the inventory gives it a CUDA ordinal, on the
    /// CPU otherwise (declared GPUs, builds without the `cuda` feature).
    fn offer(&self, pipeline: Option<&PipelineSpec>) -> Result<Offer, String> {
        let usage = self.ledger.snapshot();
        let free =
            |u: &crate::policy::ledger::DeviceUsage| u64::try_from(u.budget - u.used).unwrap_or(0);
        let mut gpus: Vec<(u32, u64)> = usage
            .iter()
            .filter_map(|u| match u.device {
                Device::Gpu(i) => Some((i, free(u))),
                Device::Cpu => None,
            })
            .collect();
        if gpus.is_empty() {
            let room = usage
                .iter()
                .find(|u| u.device == Device::Cpu)
                .map_or(0, free);
            return Ok(Offer {
                devices: vec![(Some(Device::Cpu), DeviceBudget::cpu(room))],
                stages: Vec::new(),
            });
        }
        let explicit = pipeline.map_or(&[][..], |p| &p.stages[..]);
        let mut offer = Offer::default();
        if explicit.is_empty() {
            let want = pipeline.and_then(|p| p.gpus_per_replica).unwrap_or(1) as usize;
            if want == 0 {
                offer.devices.push((None, DeviceBudget::cpu(u64::MAX)));
                return Ok(offer);
            }
            if want > gpus.len() {
                return Err(format!(
                    "pipeline.gpusPerReplica is {want}, but this node has {} GPUs",
                    gpus.len()
                ));
            }
            gpus.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            gpus.truncate(want);
            gpus.sort_by_key(|g| g.0);
        } else {
            let mut order: Vec<(u32, u64)> = Vec::new();
            for stage in explicit {
                let Some(&gpu) = gpus.iter().find(|g| g.0 == stage.gpu) else {
                    return Err(format!(
                        "pipeline.stages names gpu {}, but this node has GPUs {:?}",
                        stage.gpu,
                        gpus.iter().map(|g| g.0).collect::<Vec<_>>()
                    ));
                };
                if !order.contains(&gpu) {
                    order.push(gpu);
                }
                offer.stages.push(ExplicitStage {
                    device: order.iter().position(|g| *g == gpu).unwrap_or(0),
                    first_layer: stage.first_layer as usize,
                    last_layer: stage.last_layer as usize,
                });
            }
            gpus = order;
        }
        for (index, room) in gpus {
            let device = match self.inventory.cuda_ordinal(index) {
                Some(ordinal) => gogrid_pipeline::Device::new_cuda(ordinal)
                    .map_err(|e| format!("gpu{index} (CUDA device {ordinal}): {e}"))?,
                None => gogrid_pipeline::Device::Cpu,
            };
            offer.devices.push((
                Some(Device::Gpu(index)),
                DeviceBudget {
                    name: format!("gpu{index}"),
                    device,
                    budget_bytes: room,
                },
            ));
        }
        Ok(offer)
    }

    /// What the CUDA driver says is free on `device`, where its stages run
    /// through CUDA.
    fn driver_free_bytes(&self, device: Device) -> Option<u64> {
        match device {
            Device::Gpu(index) => self.inventory.cuda_free_bytes(index),
            Device::Cpu => None,
        }
    }

    /// Routes `model` by `traffic`; whether the split in force changed.
    fn route(&mut self, model: &str, traffic: &TrafficSplit) -> bool {
        if let Some(split) = self.splits.get(model) {
            return split.set(traffic);
        }
        let split = Arc::new(WeightedSplit::default());
        split.set(traffic);
        // Installed once the model has a version in the registry; until then
        // there is nothing to route.
        if self
            .registry
            .set_selector(model, Some(split.clone()))
            .is_ok()
        {
            self.splits.insert(model.to_owned(), split);
            return true;
        }
        false
    }

    fn publish(&self, wanted: &[Desired]) {
        let refused = wanted.iter().filter_map(|d| {
            Some(PipelineStatus {
                namespace: d.key.namespace.clone(),
                deployment: d.key.name.clone(),
                version: d.spec.model.version.clone(),
                message: Some(d.refused.clone()?),
                reason: Some(REASON_NAME_TAKEN.to_owned()),
                ..PipelineStatus::default()
            })
        });
        let pipelines: Vec<PipelineStatus> = self
            .entries
            .iter()
            .map(|((key, version), e)| {
                let mut s = e.status.clone();
                // The weight really routed here: a version that is not ready
                // on this node gets none, whatever the split says.
                let traffic = wanted.iter().find(|d| &d.key == key).map(|d| &d.traffic);
                let ready: Vec<&str> = self
                    .entries
                    .iter()
                    .filter(|((k, _), e)| k == key && e.status.ready)
                    .map(|((_, v), _)| v.as_str())
                    .collect();
                s.weight = traffic.map_or(0, |t| WeightedSplit::routed_weight(t, version, &ready));
                if let Some(st) = self
                    .registry
                    .metrics()
                    .version_stats(&e.model.name, version)
                {
                    s.latency_buckets = st
                        .buckets
                        .iter()
                        .map(|&n| i64::try_from(n).unwrap_or(i64::MAX))
                        .collect();
                    s.requests = i64::try_from(st.requests).unwrap_or(i64::MAX);
                    s.errors = i64::try_from(st.errors).unwrap_or(i64::MAX);
                    s.latency = match (st.p50_ms, st.p95_ms, st.p99_ms) {
                        (Some(p50_ms), Some(p95_ms), Some(p99_ms)) => Some(LatencySummary {
                            p50_ms,
                            p95_ms,
                            p99_ms,
                        }),
                        _ => None,
                    };
                }
                s
            })
            .chain(refused)
            .collect();
        send_if_changed(&self.status, &pipelines);
    }
}

#[cfg(test)]
mod tests {
    use gogrid_crds::analysis::{LATENCY_BUCKETS, RequestTally};
    use gogrid_serve::{Metrics, Protocol};
    use std::time::Duration;

    #[test]
    fn the_buckets_the_agent_reports_are_the_ones_analysis_reads() {
        let m = Metrics::unregistered();
        for ms in [1, 3, 3, 40, 700, 70_000] {
            m.record_request(
                "m",
                "1",
                Protocol::Rest,
                200,
                None,
                Duration::from_millis(ms),
            );
        }
        let s = m.version_stats("m", "1").expect("stats");
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS);
        let t = RequestTally {
            requests: 6,
            errors: 0,
            latency_buckets: s.buckets.iter().map(|&n| n as i64).collect(),
        };
        assert_eq!(t.percentile_ms(0.5), s.p50_ms);
        assert_eq!(t.percentile_ms(0.95), s.p95_ms);
        assert_eq!(t.percentile_ms(0.99), s.p99_ms);
    }
}
