//! The shared, cheap-to-clone state of every controller: client, config,
//! metrics, Event reporter, read caches and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use gogrid_crds::labels::DEPLOYMENT_LABEL;
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use tokio_util::sync::CancellationToken;

use crate::config::OperatorConfig;
use crate::events::EventReporter;
use crate::metrics::Metrics;

/// Read caches fed by watches.
#[derive(Clone)]
pub struct Stores {
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every ResourceProfile.
    pub profiles: Store<ResourceProfile>,
    /// Every GpuNode.
    pub gpunodes: Store<GpuNode>,
    /// Every InferenceDeployment.
    pub deployments: Store<InferenceDeployment>,
    /// The Services of the deployments (label `gogrid.io/deployment`).
    pub services: Store<Service>,
    /// The EndpointSlices of the deployments (label `gogrid.io/deployment`).
    pub slices: Store<EndpointSlice>,
    /// The ServiceMonitors of the deployments, once the kind is served.
    pub service_monitors: ServiceMonitors,
}

impl Stores {
    /// Waits until every cache holds its first list.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.nodes.wait_until_ready().await?;
        self.profiles.wait_until_ready().await?;
        self.gpunodes.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await
    }

    /// Caches with nothing in them (tests fill them through their writers).
    #[cfg(test)]
    pub fn empty() -> Self {
        use kube::runtime::reflector::store;
        Self {
            nodes: store().0,
            profiles: store().0,
            gpunodes: store().0,
            deployments: store().0,
            services: store().0,
            slices: store().0,
            service_monitors: ServiceMonitors::new(
                crate::fixtures::FakeApi::default().client(),
                CancellationToken::new(),
            ),
        }
    }
}

/// The ServiceMonitors the operator made (label `gogrid.io/deployment`), from
/// a watch that starts the first time a reconcile finds the kind served: the
/// Prometheus Operator may be installed after GoGrid, and a watch of a kind
/// the API server does not serve would fail and retry for as long as it is
/// missing. Until the watch holds its first list, a reconcile reads the one
/// ServiceMonitor it needs; after, none (at 1000 deployments the periodic
/// resync read 33 of them a second).
#[derive(Clone)]
pub struct ServiceMonitors {
    client: kube::Client,
    stop: CancellationToken,
    store: Arc<OnceLock<Store<DynamicObject>>>,
}

impl std::fmt::Debug for ServiceMonitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMonitors")
            .field("watching", &self.store.get().is_some())
            .field("cached", &self.cached())
            .finish()
    }
}

impl ServiceMonitors {
    /// A cache whose watch (with `client`, until `stop`) has not started.
    pub fn new(client: kube::Client, stop: CancellationToken) -> Self {
        Self {
            client,
            stop,
            store: Arc::default(),
        }
    }

    /// The cache once it holds its first list; starts the watch of
    /// `resource` on the first call. Call only once the kind is served.
    pub fn filled(&self, resource: &ApiResource) -> Option<&Store<DynamicObject>> {
        let store = self.store.get_or_init(|| self.watch(resource));
        matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))).then_some(store)
    }

    fn watch(&self, resource: &ApiResource) -> Store<DynamicObject> {
        let writer = reflector::store::Writer::new(resource.clone());
        let reader = writer.as_reader();
        let api = kube::Api::<DynamicObject>::all_with(self.client.clone(), resource);
        let stream = crate::controllers::watch_selected(api, DEPLOYMENT_LABEL)
            .modify(gogrid_runtime::kube_client::without_managed_fields)
            .reflect(writer)
            .for_each(|_| futures::future::ready(()));
        crate::controllers::spawn_until(stream, &self.stop);
        reader
    }

    /// A cache already filled with `monitors`, as its watch would leave it.
    #[cfg(test)]
    pub fn filled_with(client: kube::Client, monitors: Vec<DynamicObject>) -> Self {
        let resource = crate::controllers::deployment::build::service_monitor_resource();
        use kube::runtime::watcher::Event;
        let mut writer = reflector::store::Writer::new(resource);
        writer.apply_watcher_event(&Event::Init);
        for m in monitors {
            writer.apply_watcher_event(&Event::InitApply(m));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let this = Self::new(client, CancellationToken::new());
        let _ = this.store.set(writer.as_reader());
        this
    }

    /// How many ServiceMonitors the cache holds (0 before its watch starts).
    pub fn cached(&self) -> usize {
        self.store.get().map_or(0, Store::len)
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("nodes", &self.nodes.len())
            .field("profiles", &self.profiles.len())
            .field("gpunodes", &self.gpunodes.len())
            .field("deployments", &self.deployments.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("service_monitors", &self.service_monitors.cached())
            .finish()
    }
}

/// Everything a reconcile needs.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// Installation settings.
    pub config: Arc<OperatorConfig>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event reporter.
    pub events: EventReporter,
    /// Read caches; `None` until the controllers start them.
    pub stores: Option<Stores>,
    /// UIDs of objects found deleted at the API server while the cache still
    /// held them: not reconciled again (their children would be re-created).
    gone: Arc<Mutex<std::collections::HashSet<String>>>,
    /// True once every cache holds its first list.
    filled: Arc<tokio::sync::watch::Sender<bool>>,
    backoff: Arc<Mutex<HashMap<String, u32>>>,
    service_monitor_served: Arc<Mutex<Option<(Instant, bool)>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("stores", &self.stores)
            .finish()
    }
}

impl Context {
    /// The production context.
    pub fn new(client: kube::Client, config: Arc<OperatorConfig>, metrics: Arc<Metrics>) -> Self {
        let events = EventReporter::new(client.clone());
        Self {
            client,
            config,
            metrics,
            events,
            stores: None,
            filled: Arc::new(tokio::sync::watch::channel(false).0),
            gone: Arc::default(),
            backoff: Arc::default(),
            service_monitor_served: Arc::default(),
        }
    }

    /// The test twin: no Events, the given stores, default config.
    pub fn for_tests(client: kube::Client, stores: Stores) -> Self {
        Self {
            client,
            config: Arc::new(OperatorConfig::default()),
            metrics: Arc::new(Metrics::default()),
            events: EventReporter::disabled(),
            stores: Some(stores),
            filled: Arc::new(tokio::sync::watch::channel(true).0),
            gone: Arc::default(),
            backoff: Arc::default(),
            service_monitor_served: Arc::new(Mutex::new(Some((Instant::now(), false)))),
        }
    }

    /// The test twin of an API server that serves ServiceMonitors.
    #[cfg(test)]
    pub fn serving_service_monitors(self) -> Self {
        *self
            .service_monitor_served
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), true));
        self
    }

    /// The read caches. Controllers only run once they exist.
    pub fn stores(&self) -> &Stores {
        // Invariant: controllers::run sets the stores before any reconcile runs.
        self.stores
            .as_ref()
            .unwrap_or_else(|| unreachable!("stores are set before controllers start"))
    }

    /// Waits until the read caches hold their first list: a reconcile must
    /// not place, label or judge from a partial view. Returns at once after.
    pub async fn caches_ready(&self) {
        // A closed channel means the operator is stopping; the reconcile then
        // sees what there is.
        let _ = self.filled.subscribe().wait_for(|filled| *filled).await;
    }

    /// Marks the object with `uid` as deleted at the API server.
    pub fn mark_gone(&self, uid: &str) {
        let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        if gone.len() > 10_000 {
            gone.clear();
        }
        gone.insert(uid.to_owned());
    }

    /// Whether the object with `uid` was found deleted.
    pub fn is_gone(&self, uid: &str) -> bool {
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid)
    }

    /// Says that every cache holds its first list.
    pub fn set_caches_filled(&self) {
        self.filled.send_replace(true);
    }

    /// Next retry delay for a failing object: 1 s doubling to 5 min.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300))
    }

    /// Forget the failures of an object after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Whether the API server serves `servicemonitors.monitoring.coreos.com`
    /// (cached for a minute). A discovery that failed is an error, not "not
    /// served": taken for an answer, it left the deployments reconciled in
    /// that minute without their ServiceMonitors, which the next look a
    /// minute later created while nothing had changed.
    pub async fn service_monitor_served(&self) -> Result<bool, kube::Error> {
        let cached = *self
            .service_monitor_served
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, served)) = cached
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(served);
        }
        let served = match kube::discovery::group(&self.client, "monitoring.coreos.com").await {
            Ok(group) => group
                .recommended_resources()
                .iter()
                .any(|(r, _)| r.plural == "servicemonitors"),
            Err(kube::Error::Discovery(kube::error::DiscoveryError::MissingApiGroup(_))) => false,
            Err(e) => return Err(e),
        };
        *self
            .service_monitor_served
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), served));
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeApi;

    #[tokio::test]
    async fn failures_back_off_doubling_to_five_minutes_and_a_success_resets_them() {
        let stores = Stores::empty();
        let ctx = Context::for_tests(FakeApi::default().client(), stores);
        let delays: Vec<u64> = (0..12)
            .map(|_| ctx.next_backoff("rp/a").as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(
            ctx.next_backoff("rp/b").as_secs(),
            1,
            "each object backs off on its own"
        );
        ctx.reset_backoff("rp/a");
        assert_eq!(ctx.next_backoff("rp/a").as_secs(), 1);
    }
}
