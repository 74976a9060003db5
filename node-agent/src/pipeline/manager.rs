//! Keeps the loaded model versions equal to what the node must serve: loads
//! new versions (weights reserved in the VRAM ledger first, candle on a
//! blocking thread), registers them with the serving layer, routes unversioned
//! requests by the split, unloads what is no longer wanted, and publishes the
//! pipelines' status. A failed load leaves the version already serving alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gogrid_crds::gpu_node::{PipelineStatus, StageStatus};
use gogrid_crds::inference_deployment::{ModelFormat, ModelSpec, ModelTask, TrafficSplit};
use gogrid_pipeline::{DeviceBudget, Format, LoadSpec, Requantize, Task};
use gogrid_runtime::Shutdown;
use gogrid_serve::Registry;
use tokio::sync::watch;

use super::admission::{Footprint, GateAdmission};
use super::backend::ModelBackend;
use super::split::WeightedSplit;
use crate::policy::ledger::{Device, Ledger, Reservation, Use};
use crate::sync::deployments::{DeploymentKey, Desired};

/// How often failed loads are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// One loaded (or failed) model version.
#[derive(Debug)]
struct Entry {
    model: ModelSpec,
    status: PipelineStatus,
    /// Weights held in the ledger while loaded.
    _reservation: Option<Reservation>,
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

fn load_spec(model: &ModelSpec, free: u64) -> Result<LoadSpec, String> {
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
        devices: vec![DeviceBudget::cpu(free)],
        stages: Vec::new(),
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
    ) -> Self {
        Self {
            registry,
            admission,
            ledger,
            entries: BTreeMap::new(),
            splits: BTreeMap::new(),
            status,
        }
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
        loop {
            let wanted = desired.borrow_and_update().clone();
            self.reconcile(&wanted).await;
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return Ok(()) },
                _ = retry.tick() => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    async fn reconcile(&mut self, wanted: &[Desired]) {
        // Load what is missing or changed, before unloading anything.
        for d in wanted {
            for model in d.versions() {
                let id = (d.key.clone(), model.version.clone());
                let current = self.entries.get(&id);
                // Loaded with this spec: nothing to do. Failed with it: retried.
                if current.is_some_and(|e| e.model == *model && e.status.ready) {
                    continue;
                }
                self.load(&d.key, model).await;
            }
            self.route(&d.spec.model.name, &d.traffic);
        }
        // Unload versions no longer wanted.
        let keep: Vec<(DeploymentKey, String)> = wanted
            .iter()
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
                self.registry.remove(&entry.model.name, &id.1);
                self.admission.set_footprint(&entry.model.name, &id.1, None);
                tracing::info!(deployment = %id.0, version = %id.1, "unloaded");
            }
        }
        let models: Vec<String> = wanted.iter().map(|d| d.spec.model.name.clone()).collect();
        self.splits.retain(|m, _| models.contains(m));
        self.publish(wanted);
    }

    async fn load(&mut self, key: &DeploymentKey, model: &ModelSpec) {
        let id = (key.clone(), model.version.clone());
        let mut status = PipelineStatus {
            namespace: key.namespace.clone(),
            deployment: key.name.clone(),
            version: model.version.clone(),
            ..Default::default()
        };
        match self.try_load(model).await {
            Ok((backend, reservation)) => {
                let name = &model.name;
                let replaced = self.entries.remove(&id).is_some();
                if replaced {
                    self.registry.remove(name, &model.version);
                }
                let stages = backend.loaded().stages();
                let per_item_bytes = match backend.loaded() {
                    gogrid_pipeline::Loaded::Embedder(e) => e.request_bytes(e.max_tokens()),
                    gogrid_pipeline::Loaded::Generator(g) => {
                        g.request_bytes(g.config().context_length)
                    }
                };
                if let Some(r) = &reservation {
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
                    .add(name, &model.version, Arc::new(backend))
                    .and_then(|()| self.registry.set_ready(name, &model.version, true));
                if let Err(e) = added {
                    status.message = Some(format!("registering the model failed: {e}"));
                } else {
                    status.ready = true;
                    status.vram_bytes = reservation.as_ref().map_or(0, |r| r.bytes() as i64);
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
                }
                self.entries.insert(
                    id,
                    Entry {
                        model: model.clone(),
                        status,
                        _reservation: reservation,
                    },
                );
            }
            Err(message) => {
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
                        self.entries.insert(
                            id,
                            Entry {
                                model: model.clone(),
                                status,
                                _reservation: None,
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
    ) -> Result<(ModelBackend, Option<Reservation>), String> {
        // Pipelines run on the CPU device in this build; the weights are
        // accounted on the device with the most room (a GPU's budget on a
        // simulated or NVML node, host memory on a CPU-only one).
        let target = self
            .ledger
            .snapshot()
            .into_iter()
            .max_by_key(|u| u.budget - u.used)
            .map_or(Device::Cpu, |u| u.device);
        let free = self
            .ledger
            .usage(target)
            .map_or(0, |u| u64::try_from(u.budget - u.used).unwrap_or(0));
        let spec = load_spec(model, free)?;
        let planned = gogrid_pipeline::plan_load(&spec).map_err(|e| e.to_string())?;
        let need: u64 = planned.iter().map(|s| s.bytes).sum();
        let reservation = self
            .ledger
            .try_reserve(target, need, Use::Weights)
            .map_err(|e| format!("refused: {e}"))?;
        let loaded = tokio::task::spawn_blocking(move || gogrid_pipeline::load(&spec))
            .await
            .map_err(|e| format!("the load task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok((ModelBackend::new(loaded), Some(reservation)))
    }

    fn route(&mut self, model: &str, traffic: &TrafficSplit) {
        if let Some(split) = self.splits.get(model) {
            split.set(traffic);
            return;
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
        }
    }

    fn publish(&self, wanted: &[Desired]) {
        let pipelines: Vec<PipelineStatus> = self
            .entries
            .iter()
            .map(|((key, version), e)| {
                let mut s = e.status.clone();
                let traffic = wanted.iter().find(|d| &d.key == key).map(|d| &d.traffic);
                s.weight = traffic.map_or(0, |t| WeightedSplit::weight_of(t, version));
                s
            })
            .collect();
        self.status.send_if_modified(|current| {
            if *current == pipelines {
                return false;
            }
            *current = pipelines;
            true
        });
    }
}
