//! The models being served: name → versions, readiness, and the per-request version choice.
//!
//! Reads take a lock-free snapshot (`arc-swap`); writes (add, ready, remove,
//! selector) copy the small map under a mutex that no request ever takes. A
//! request holds an `Arc` of the version it resolved, so removing a version
//! never drops a request already in flight: its worker drains the queue and ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::backend::{Backend, ModelMetadata, TaskKind};
use crate::batcher::{BatchPolicy, Queue, Work, WorkerContext};
use crate::error::{Result, ServeError};
use crate::metrics::Metrics;

/// Chooses the version of an unversioned request. Called once per request,
/// so it must be cheap; the agent swaps it atomically with
/// [`Registry::set_selector`] (e.g. a weighted canary split).
pub trait VersionSelector: Send + Sync + 'static {
    /// Returns the index in `ready` (the model's ready versions, in the order
    /// they were added) of the version to use, or `None` to refuse with 503.
    fn select(&self, model: &str, ready: &[&str]) -> Option<usize>;
}

impl<F> VersionSelector for F
where
    F: Fn(&str, &[&str]) -> Option<usize> + Send + Sync + 'static,
{
    fn select(&self, model: &str, ready: &[&str]) -> Option<usize> {
        self(model, ready)
    }
}

/// The default selector: the single ready version, or the one added last when
/// several are ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatestReady;

impl VersionSelector for LatestReady {
    fn select(&self, _model: &str, ready: &[&str]) -> Option<usize> {
        ready.len().checked_sub(1)
    }
}

/// One loaded version of a model: its backend, readiness and queue.
#[derive(Debug)]
pub struct ModelVersion {
    model: String,
    version: String,
    backend: Arc<dyn Backend>,
    ready: AtomicBool,
    queue: Queue,
}

impl ModelVersion {
    /// Model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Version name.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether it takes requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The backend's metadata.
    pub fn metadata(&self) -> &ModelMetadata {
        self.backend.metadata()
    }

    /// The backend's task.
    pub fn task(&self) -> TaskKind {
        self.backend.task()
    }

    pub(crate) fn submit(&self, work: Work) -> Result<()> {
        self.queue.submit(work)
    }
}

#[derive(Clone, Default)]
struct Model {
    versions: Vec<Arc<ModelVersion>>,
    selector: Option<Arc<dyn VersionSelector>>,
}

type Snapshot = BTreeMap<String, Model>;

/// Name → versions of every model served on this node.
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    context: WorkerContext,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("models", &self.snapshot.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry whose workers batch under `policy`, ask `admission`
    /// before each batch and record into `metrics`.
    pub fn new(
        policy: watch::Receiver<BatchPolicy>,
        admission: Arc<dyn Admission>,
        metrics: Metrics,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::new()),
            writer: Mutex::new(()),
            context: WorkerContext {
                policy,
                admission,
                metrics,
            },
        }
    }

    /// The metrics the registry's workers record into.
    pub fn metrics(&self) -> &Metrics {
        &self.context.metrics
    }

    fn update<T>(&self, change: impl FnOnce(&mut Snapshot) -> Result<T>) -> Result<T> {
        let _guard = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Snapshot::clone(&self.snapshot.load());
        let out = change(&mut next)?;
        self.snapshot.store(Arc::new(next));
        Ok(out)
    }

    /// Adds `model`/`version`, not yet ready, and starts its worker thread.
    pub fn add(&self, model: &str, version: &str, backend: Arc<dyn Backend>) -> Result<()> {
        if model.is_empty() || version.is_empty() {
            return Err(ServeError::invalid(
                "model and version names must not be empty",
            ));
        }
        self.update(|models| {
            let entry = models.entry(model.to_owned()).or_default();
            if entry.versions.iter().any(|v| v.version == version) {
                return Err(ServeError::invalid(format!(
                    "model {model} already has a version {version}"
                )));
            }
            let queue = Queue::start(model, version, backend.clone(), &self.context)?;
            entry.versions.push(Arc::new(ModelVersion {
                model: model.to_owned(),
                version: version.to_owned(),
                backend,
                ready: AtomicBool::new(false),
                queue,
            }));
            Ok(())
        })
    }

    /// Marks `model`/`version` ready (or not) for requests.
    pub fn set_ready(&self, model: &str, version: &str, ready: bool) -> Result<()> {
        let entry = self.version(model, version)?;
        entry.ready.store(ready, Ordering::Release);
        Ok(())
    }

    /// Removes `model`/`version`; requests already holding it finish. Returns
    /// whether it was there. A model left without versions disappears.
    pub fn remove(&self, model: &str, version: &str) -> bool {
        let removed = self.update(|models| {
            let Some(entry) = models.get_mut(model) else {
                return Ok(false);
            };
            let before = entry.versions.len();
            entry.versions.retain(|v| v.version != version);
            let removed = entry.versions.len() != before;
            if entry.versions.is_empty() {
                models.remove(model);
            }
            Ok(removed)
        });
        let removed = matches!(removed, Ok(true));
        if removed {
            self.context.metrics.forget(model, version);
        }
        removed
    }

    /// Replaces the selector of `model`'s unversioned requests; `None` restores
    /// [`LatestReady`]. Applies from the next request on.
    pub fn set_selector(
        &self,
        model: &str,
        selector: Option<Arc<dyn VersionSelector>>,
    ) -> Result<()> {
        self.update(|models| {
            let entry = models
                .get_mut(model)
                .ok_or_else(|| ServeError::NotFound(format!("unknown model {model}")))?;
            entry.selector = selector;
            Ok(())
        })
    }

    /// The named version, ready or not.
    pub fn version(&self, model: &str, version: &str) -> Result<Arc<ModelVersion>> {
        let snapshot = self.snapshot.load();
        let entry = snapshot
            .get(model)
            .ok_or_else(|| ServeError::NotFound(format!("unknown model {model:?}")))?;
        entry
            .versions
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .ok_or_else(|| {
                ServeError::NotFound(format!("model {model:?} has no version {version:?}"))
            })
    }

    /// The version a request should use: the named one (which must be ready), or
    /// the selector's choice among the ready ones.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<ModelVersion>> {
        if let Some(version) = version.filter(|v| !v.is_empty()) {
            let entry = self.version(model, version)?;
            if !entry.is_ready() {
                return Err(ServeError::Unavailable(format!(
                    "model {model} version {version} is not ready"
                )));
            }
            return Ok(entry);
        }
        let snapshot = self.snapshot.load();
        let entry = snapshot
            .get(model)
            .ok_or_else(|| ServeError::NotFound(format!("unknown model {model:?}")))?;
        let ready: Vec<&ModelVersion> = entry
            .versions
            .iter()
            .map(|v| &**v)
            .filter(|v| v.is_ready())
            .collect();
        let names: Vec<&str> = ready.iter().map(|v| v.version.as_str()).collect();
        let choice = match &entry.selector {
            Some(selector) => selector.select(model, &names),
            None => LatestReady.select(model, &names),
        };
        choice
            .and_then(|i| names.get(i))
            .and_then(|name| entry.versions.iter().find(|v| v.version == *name))
            .cloned()
            .ok_or_else(|| ServeError::Unavailable(format!("model {model} has no ready version")))
    }

    /// Every version of `model` (ready or not), in the order they were added.
    pub fn versions(&self, model: &str) -> Result<Vec<Arc<ModelVersion>>> {
        self.snapshot
            .load()
            .get(model)
            .map(|m| m.versions.clone())
            .ok_or_else(|| ServeError::NotFound(format!("unknown model {model:?}")))
    }

    /// Whether the model is known (any version).
    pub fn contains(&self, model: &str) -> bool {
        self.snapshot.load().contains_key(model)
    }

    /// Every model with its versions (in the order they were added).
    pub fn list(&self) -> Vec<(String, Vec<Arc<ModelVersion>>)> {
        self.snapshot
            .load()
            .iter()
            .map(|(name, model)| (name.clone(), model.versions.clone()))
            .collect()
    }

    /// Whether every model has at least one ready version (true with no models).
    pub fn all_ready(&self) -> bool {
        self.snapshot
            .load()
            .values()
            .all(|m| m.versions.iter().any(|v| v.is_ready()))
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
