//! Starts the controllers: waits for the CRDs, fills the read caches, then runs
//! the node labeller, the ResourceProfile and the InferenceDeployment controllers
//! until `stop` fires.

pub mod deployment;
pub mod node;
pub mod profile;

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, future};
use gogrid_crds::labels::DEPLOYMENT_LABEL;
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::{WatchStreamExt, conditions, reflector, wait::await_condition, watcher};
use kube::{Api, Resource};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Stores};

/// The server-side timeout of every watch, in seconds. The client treats a
/// watch that stays silent for this long (plus 5 s) as dead and watches again:
/// a connection that died without a close (an API server that restarts mid
/// watch) is noticed within this bound instead of kube's default 290 s.
pub const WATCH_TIMEOUT_SECONDS: u32 = 30;

/// The Node events that change what GoGrid reads of a node: its labels (the
/// profile it wins, placement), its first sighting and its deletion. The
/// kubelet (or kwok) rewrites every node's status every few seconds; mapped
/// to every profile or to every deployment of the node's profile, those
/// heartbeats alone kept a 1000-node fleet's controllers busy and, with a
/// debounce that restarts on each new trigger, could postpone a reconcile
/// for as long as they kept coming.
pub fn label_changes(
    nodes: impl futures::Stream<Item = Arc<Node>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<Node>> + Send + 'static {
    changes_of(nodes, |n, h| n.metadata.labels.hash(h))
}

/// The GpuNode events that change more than the heartbeat time: an agent
/// rewrites its GpuNode every 30 s to say it is alive, and each rewrite
/// reconciled every deployment placed on the node (with the fleet's
/// deployments, all of them). A heartbeat going stale is found by the
/// deployments' own periodic look, which does not need an event.
pub fn content_changes(
    gpunodes: impl futures::Stream<Item = Arc<GpuNode>> + Send + 'static,
) -> impl futures::Stream<Item = Arc<GpuNode>> + Send + 'static {
    changes_of(gpunodes, |g, h| {
        let mut status = g.status.clone();
        if let Some(s) = status.as_mut() {
            s.heartbeat_time = None;
        }
        serde_json::to_vec(&status).unwrap_or_default().hash(h);
    })
}

/// The objects of `objects` whose fingerprint (what `fingerprint` hashes,
/// and whether it is being deleted) differs from the last one passed under
/// the same name.
fn changes_of<K: Resource + Send + Sync + 'static>(
    objects: impl futures::Stream<Item = Arc<K>> + Send + 'static,
    fingerprint: impl Fn(&K, &mut std::collections::hash_map::DefaultHasher) + Send + 'static,
) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
    let mut seen: HashMap<String, u64> = HashMap::new();
    objects.filter(move |o| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        fingerprint(o, &mut h);
        o.meta().deletion_timestamp.is_some().hash(&mut h);
        let h = h.finish();
        let name = o.meta().name.clone().unwrap_or_default();
        future::ready(seen.insert(name, h) != Some(h))
    })
}

/// What the operator keeps of a Node: its metadata without managedFields.
/// Placement, the labeller and the profiles read a node's name, labels and
/// deletion only; its status (conditions, addresses, capacity, images) is most
/// of the object and changes with every heartbeat.
pub fn node_metadata(node: &mut Node) {
    gogrid_runtime::kube_client::without_managed_fields(node);
    node.spec = None;
    node.status = None;
}

/// At most one item per `every`, the newest of those that arrived meanwhile
/// (a throttle, not a debounce: a steady flow still gets through). For
/// triggers whose mapper does not depend on which item it was.
pub fn throttled<T: Send + 'static>(
    items: impl futures::Stream<Item = T> + Send + 'static,
    every: Duration,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(items.boxed(), move |mut items| async move {
        let mut last = items.next().await?;
        let window = tokio::time::sleep(every);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                next = items.next() => match next {
                    Some(item) => last = item,
                    None => break,
                },
            }
        }
        Some((last, items))
    })
}

/// Watcher settings of every controller and cache (errors back off 0.25 s to
/// 5 s: `gogrid_runtime::kube_client::watch_backoff`).
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// How many changes a subscriber of a shared watch may lag behind.
const SUBSCRIBER_BUFFER: usize = 4096;

/// A watch of `api` with the operator's settings and backoff.
pub fn watch<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watch_selected(api, "")
}

/// [`watch`] of the objects that the label selector `labels` selects (all
/// of them with `""`).
pub(crate) fn watch_selected<K>(
    api: Api<K>,
    labels: &str,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let config = match labels {
        "" => watcher_config(),
        selector => watcher_config().labels(selector),
    };
    watcher(api, config).backoff(gogrid_runtime::kube_client::watch_backoff())
}

/// One watch of a kind, shared by the read cache and every controller that
/// follows the kind: the API server serves one watch per kind to the
/// operator, and the operator keeps one copy of each object.
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: reflector::Store<K>,
    writer: reflector::store::Writer<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> std::fmt::Debug for SharedWatch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWatch").finish_non_exhaustive()
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn new() -> Self {
        let (reader, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        Self { reader, writer }
    }

    /// The changes, for a controller; subscribe before [`SharedWatch::start`].
    pub fn subscribe(&self) -> reflector::ReflectHandle<K> {
        self.writer
            .subscribe()
            .unwrap_or_else(|| unreachable!("a shared store always has subscribers"))
    }

    /// Watches the objects of `api` that `labels` selects (all with `""`)
    /// into the cache until `stop`, each object `trim`med of what the
    /// operator never reads before it is kept; returns the cache.
    fn start(
        self,
        api: Api<K>,
        labels: &str,
        trim: fn(&mut K),
        stop: &CancellationToken,
    ) -> reflector::Store<K> {
        let stream = watch_selected(api, labels)
            .modify(trim)
            .reflect_shared(self.writer)
            .for_each(|_| future::ready(()));
        spawn_until(stream, stop);
        self.reader
    }
}

/// Run `task` in the background until it ends or `stop` fires.
pub(crate) fn spawn_until(
    task: impl std::future::Future<Output = ()> + Send + 'static,
    stop: &CancellationToken,
) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = stop.cancelled() => {}
        }
    });
}

/// The shared watches' subscriptions, one per controller that follows a kind.
pub struct Subscriptions {
    /// Nodes, for the node labeller (its own kind).
    pub nodes_for_labeller: reflector::ReflectHandle<Node>,
    /// Nodes, for the profile controller (matched nodes).
    pub nodes_for_profiles: reflector::ReflectHandle<Node>,
    /// Nodes, for the deployment controller (placement).
    pub nodes_for_deployments: reflector::ReflectHandle<Node>,
    /// Profiles, for the node labeller (winners).
    pub profiles_for_labeller: reflector::ReflectHandle<ResourceProfile>,
    /// Profiles, for the profile controller (its own kind).
    pub profiles: reflector::ReflectHandle<ResourceProfile>,
    /// Profiles, for the deployment controller.
    pub profiles_for_deployments: reflector::ReflectHandle<ResourceProfile>,
    /// GpuNodes, for the deployment controller (readiness, budgets, stats).
    pub gpunodes: reflector::ReflectHandle<GpuNode>,
    /// InferenceDeployments, for their controller.
    pub deployments: reflector::ReflectHandle<InferenceDeployment>,
    /// The deployments' Services, for their controller (its children).
    pub services: reflector::ReflectHandle<Service>,
    /// The deployments' EndpointSlices, for their controller (its children).
    pub slices: reflector::ReflectHandle<EndpointSlice>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").finish_non_exhaustive()
    }
}

async fn wait_for_crds(client: &kube::Client, stop: &CancellationToken) -> anyhow::Result<bool> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in gogrid_crds::crdgen::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        tracing::info!(crd = %name, "waiting for CRD to be established");
        tokio::select! {
            r = await_condition(api.clone(), &name, conditions::is_crd_established()) => {
                r.with_context(|| format!("waiting for CRD {name}"))?;
            }
            _ = stop.cancelled() => return Ok(false),
        }
    }
    Ok(true)
}

/// Run every controller until `stop` fires.
pub async fn run(
    mut ctx: Context,
    stop: CancellationToken,
    http: crate::http::State,
) -> anyhow::Result<()> {
    if !wait_for_crds(&ctx.client, &stop).await? {
        return Ok(());
    }
    let client = ctx.client.clone();
    let (nodes, profiles, gpunodes, deployments) = (
        SharedWatch::<Node>::new(),
        SharedWatch::<ResourceProfile>::new(),
        SharedWatch::<GpuNode>::new(),
        SharedWatch::<InferenceDeployment>::new(),
    );
    let (services, slices) = (
        SharedWatch::<Service>::new(),
        SharedWatch::<EndpointSlice>::new(),
    );
    // Every subscription exists before its watch starts, so that each
    // controller sees every object of the first list.
    let subs = Subscriptions {
        nodes_for_labeller: nodes.subscribe(),
        nodes_for_profiles: nodes.subscribe(),
        nodes_for_deployments: nodes.subscribe(),
        profiles_for_labeller: profiles.subscribe(),
        profiles: profiles.subscribe(),
        profiles_for_deployments: profiles.subscribe(),
        gpunodes: gpunodes.subscribe(),
        deployments: deployments.subscribe(),
        services: services.subscribe(),
        slices: slices.subscribe(),
    };
    use gogrid_runtime::kube_client::without_managed_fields as slim;
    // The children are read from caches of what the operator made (the
    // deployment label), not with a GET and a LIST per reconcile.
    let all = "";
    let stores = Stores {
        nodes: nodes.start(Api::all(client.clone()), all, node_metadata, &stop),
        profiles: profiles.start(Api::all(client.clone()), all, slim, &stop),
        gpunodes: gpunodes.start(Api::all(client.clone()), all, slim, &stop),
        deployments: deployments.start(Api::all(client.clone()), all, slim, &stop),
        services: services.start(Api::all(client.clone()), DEPLOYMENT_LABEL, slim, &stop),
        slices: slices.start(Api::all(client.clone()), DEPLOYMENT_LABEL, slim, &stop),
        service_monitors: crate::context::ServiceMonitors::new(client.clone(), stop.clone()),
    };
    ctx.stores = Some(stores.clone());
    let shutdown = {
        let stop = stop.clone();
        move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        }
    };
    // The controllers consume their subscriptions from the start (a shared
    // watch waits for its slowest subscriber); a reconcile waits until
    // every cache holds its first list (`Context::caches_ready`).
    let ready = async {
        tokio::select! {
            r = stores.wait_until_ready() => r.context("filling the caches")?,
            _ = stop.cancelled() => return anyhow::Ok(()),
        }
        tracing::info!(?stores, "caches filled; controllers reconciling");
        ctx.set_caches_filled();
        http.set_ready(true);
        Ok(())
    };
    let (ready, (), (), ()) = tokio::join!(
        ready,
        node::run(
            ctx.clone(),
            subs.nodes_for_labeller,
            subs.profiles_for_labeller,
            shutdown()
        ),
        profile::run(
            ctx.clone(),
            subs.profiles,
            subs.nodes_for_profiles,
            shutdown()
        ),
        deployment::run(
            ctx.clone(),
            deployment::Streams {
                deployments: subs.deployments,
                gpunodes: subs.gpunodes,
                profiles: subs.profiles_for_deployments,
                nodes: subs.nodes_for_deployments,
                services: subs.services,
                slices: subs.slices,
            },
            shutdown()
        ),
    );
    ready
}

/// The one error policy of every controller: count the failure, log it, tell
/// people through a Warning Event on the object (when there is one to attach it
/// to), then decide the retry: an invalid spec waits for a change, a transient
/// error backs off per object.
pub fn on_error(
    ctx: &Context,
    controller: &'static str,
    key: &str,
    regarding: Option<k8s_openapi::api::core::v1::ObjectReference>,
    error: &crate::Error,
) -> kube::runtime::controller::Action {
    use kube::runtime::controller::Action;
    ctx.metrics.error(controller, error);
    tracing::warn!(controller, object = key, error = %error.chain(), "reconcile failed");
    if let Some(reference) = regarding {
        let events = ctx.events.clone();
        let (reason, note) = (error.reason(), error.chain());
        tokio::spawn(async move { events.warning(&reference, reason, "Reconcile", &note).await });
    }
    if error.is_transient() {
        Action::requeue(ctx.next_backoff(key))
    } else {
        Action::await_change()
    }
}

/// Periodic resync of an object that is fine.
pub const RESYNC: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, profile: &str, heartbeat: i64) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some([("gogrid.io/profile".to_owned(), profile.to_owned())].into());
        // What a heartbeat changes: the status and the resourceVersion.
        n.metadata.resource_version = Some(heartbeat.to_string());
        Arc::new(n)
    }

    #[test]
    fn the_operator_keeps_a_nodes_name_labels_and_deletion_only() {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
        let mut n = (*node("n1", "desk", 7)).clone();
        n.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        n.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubelet".into()),
            ..Default::default()
        }]);
        n.spec = Some(NodeSpec {
            pod_cidr: Some("10.0.0.0/24".into()),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let before = n.clone();
        node_metadata(&mut n);
        assert_eq!(n.metadata.managed_fields, None);
        assert_eq!((n.spec.as_ref(), n.status.as_ref()), (None, None));
        assert_eq!(n.metadata.name, before.metadata.name);
        assert_eq!(n.metadata.labels, before.metadata.labels);
        assert_eq!(
            n.metadata.deletion_timestamp,
            before.metadata.deletion_timestamp
        );
    }

    #[tokio::test]
    async fn only_label_changes_of_a_node_pass_not_its_heartbeats() {
        let events = futures::stream::iter([
            node("a", "p", 1),
            node("b", "p", 1),
            node("a", "p", 2),
            node("a", "p", 3),
            node("a", "q", 4),
            node("b", "p", 2),
        ]);
        let passed: Vec<(String, String)> = label_changes(events)
            .map(|n| {
                let label = n
                    .metadata
                    .labels
                    .as_ref()
                    .map(|l| l["gogrid.io/profile"].clone());
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    label.unwrap_or_default(),
                )
            })
            .collect()
            .await;
        assert_eq!(
            passed,
            [
                ("a".into(), "p".into()),
                ("b".into(), "p".into()),
                ("a".into(), "q".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_gpunode_heartbeat_alone_does_not_pass_a_change_does() {
        let gpunode = |beat: i64, pipelines: i32| {
            let mut g = GpuNode::new("n1", Default::default());
            g.status = Some(gogrid_crds::GpuNodeStatus {
                heartbeat_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(1_800_000_000 + beat).expect("time"),
                )),
                pipeline_count: pipelines,
                ..Default::default()
            });
            Arc::new(g)
        };
        let events = futures::stream::iter([
            gpunode(0, 1),
            gpunode(30, 1),
            gpunode(60, 2),
            gpunode(90, 2),
        ]);
        let passed: Vec<i32> = content_changes(events)
            .map(|g| g.status.as_ref().map_or(0, |s| s.pipeline_count))
            .collect()
            .await;
        assert_eq!(
            passed,
            [1, 2],
            "the first sighting and the change, no heartbeat"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_is_throttled_to_one_item_per_window_the_newest() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let out = throttled(tokio_stream_from(rx), Duration::from_millis(250));
        let feeder = tokio::spawn(async move {
            for i in 0..100u32 {
                tx.send(i).ok();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let got: Vec<u32> = out.collect().await;
        feeder.await.expect("feeder");
        // 100 items over a second: one per 250 ms window, never starved.
        assert!((4..=6).contains(&got.len()), "{got:?}");
        assert_eq!(got.last(), Some(&99), "the newest item of the last window");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl futures::Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
