//! Which model versions this node must serve: the InferenceDeployments whose
//! placement names the node, with the traffic split the operator put in their
//! status. One watch per process ([`watch_all`]) feeds an index by node to
//! each node's [`publish`], which hands its deployments on through a watch
//! channel: a hollow agent playing 1000 nodes opens one watch, as one real
//! agent does.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{FutureExt as _, StreamExt};
use gogrid_crds::inference_deployment::{ModelSpec, TrafficSplit};
use gogrid_crds::rollout::spec_traffic;
use gogrid_crds::{InferenceDeployment, InferenceDeploymentSpec};
use gogrid_runtime::Shutdown;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::channel::send_if_changed;

/// A deployment, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentKey {
    /// Namespace (`standalone` in standalone mode).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One deployment this node serves.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Which deployment.
    pub key: DeploymentKey,
    /// Its spec.
    pub spec: InferenceDeploymentSpec,
    /// The split to route by.
    pub traffic: TrafficSplit,
    /// Why this node does not serve it (another deployment placed here
    /// already serves its model name): nothing is loaded, the reason is
    /// reported.
    pub refused: Option<String>,
}

impl Desired {
    /// A deployment from its spec alone (standalone mode, or before the operator
    /// wrote a split): the split the spec asks for.
    pub fn from_spec(key: DeploymentKey, spec: InferenceDeploymentSpec) -> Self {
        let (traffic, _) = spec_traffic(&spec);
        Self {
            key,
            spec,
            traffic,
            refused: None,
        }
    }

    /// Every model version the split needs loaded, stable first.
    pub fn versions(&self) -> Vec<&ModelSpec> {
        let mut out = Vec::new();
        let candidates = [
            Some(&self.spec.model),
            self.spec.canary_model(),
            self.spec.preview_model(),
        ];
        let wanted = [
            Some(self.traffic.stable_version.as_str()),
            self.traffic.canary_version.as_deref(),
            self.traffic.preview_version.as_deref(),
            self.traffic.retained_version.as_deref(),
        ];
        for version in wanted.into_iter().flatten() {
            if let Some(m) = candidates
                .iter()
                .flatten()
                .find(|m| m.version == version)
                .filter(|m| !out.iter().any(|o: &&ModelSpec| o.version == m.version))
            {
                out.push(*m);
            }
        }
        out
    }
}

/// The deployments placed on `node`, by key. A model name names the REST
/// and gRPC paths, so one agent serves it for one deployment: the oldest
/// (then the first by namespace and name); the others are refused with the
/// reason.
/// Only those placed here are cloned: an agent sees every deployment of the
/// cluster, and a fleet of N agents would otherwise copy all of them N times
/// per change.
pub fn placed_on<D: Borrow<InferenceDeployment>>(node: &str, all: &[D]) -> Vec<Desired> {
    let mut out: BTreeMap<DeploymentKey, Desired> = BTreeMap::new();
    let mut age: BTreeMap<DeploymentKey, Option<jiff::Timestamp>> = BTreeMap::new();
    for infd in all {
        let infd = infd.borrow();
        let Some(status) = infd.status.as_ref() else {
            continue;
        };
        if !status.placement.iter().any(|p| p.node == node) {
            continue;
        }
        let key = DeploymentKey {
            namespace: infd.namespace().unwrap_or_default(),
            name: infd.name_any(),
        };
        let mut desired = Desired::from_spec(key.clone(), infd.spec.clone());
        if let Some(traffic) = status.traffic.clone() {
            desired.traffic = traffic;
        }
        age.insert(
            key.clone(),
            infd.metadata.creation_timestamp.as_ref().map(|t| t.0),
        );
        out.insert(key, desired);
    }
    let mut order: Vec<&DeploymentKey> = out.keys().collect();
    order.sort_by_key(|k| (age.get(*k).copied().flatten(), *k));
    let mut owners: BTreeMap<String, DeploymentKey> = BTreeMap::new();
    let mut refused = Vec::new();
    for key in order {
        let model = out[key].spec.model.name.clone();
        match owners.get(&model) {
            Some(owner) => refused.push((
                key.clone(),
                format!(
                    "model name {model:?} is already served on this node by {owner}: an agent serves one deployment per model name (it names the REST and gRPC paths)"
                ),
            )),
            None => {
                owners.insert(model, key.clone());
            }
        }
    }
    for (key, why) in refused {
        if let Some(d) = out.get_mut(&key) {
            d.refused = Some(why);
        }
    }
    out.into_values().collect()
}

/// Watch events taken in one go before the placed deployments are computed
/// again: a burst (the initial list, a thousand deployments created at once)
/// costs one computation per burst, not one per event.
const COALESCE: usize = 1024;

/// What one watch event means for the recomputation.
enum Step {
    /// The index changed (or the initial list completed): compute again.
    Changed,
    /// Nothing to compute yet (part of the initial list, or an error).
    Wait,
    /// The stream ended.
    End,
}

fn step<E: std::fmt::Display>(
    event: Option<Result<watcher::Event<InferenceDeployment>, E>>,
    listing: &mut bool,
) -> Step {
    match event {
        // Recompute once the initial list is complete, then on every change.
        Some(Ok(watcher::Event::Init)) => {
            *listing = true;
            Step::Wait
        }
        Some(Ok(watcher::Event::InitApply(_))) => Step::Wait,
        Some(Ok(watcher::Event::InitDone)) => {
            *listing = false;
            Step::Changed
        }
        Some(Ok(_)) => Step::Changed,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "watching InferenceDeployments failed; retrying");
            Step::Wait
        }
        None => Step::End,
    }
}

/// Every InferenceDeployment that has a placement, by the nodes it names: what
/// the one watch of a process hands its nodes. Indexed once per change, so a
/// process playing N nodes pays for the index once, not N scans of the
/// cluster's deployments.
pub type Snapshot = Arc<HashMap<String, Vec<Arc<InferenceDeployment>>>>;

/// The sending side of the one InferenceDeployment watch: `None` until the
/// first list is complete.
pub type SnapshotSender = watch::Sender<Option<Snapshot>>;

/// The receiving side: what each node's [`publish`] reads.
pub type SnapshotFeed = watch::Receiver<Option<Snapshot>>;

/// `all`, by the nodes their placement names.
pub fn by_node(all: &[Arc<InferenceDeployment>]) -> HashMap<String, Vec<Arc<InferenceDeployment>>> {
    let mut out: HashMap<String, Vec<Arc<InferenceDeployment>>> = HashMap::new();
    for infd in all {
        let Some(status) = infd.status.as_ref() else {
            continue;
        };
        let mut nodes: Vec<&str> = status.placement.iter().map(|p| p.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            out.entry(node.to_owned()).or_default().push(infd.clone());
        }
    }
    out
}

/// Watch InferenceDeployments in every namespace and hand on a [`Snapshot`]
/// after the initial list and after every burst of changes, until shutdown.
/// A process runs one, whatever the number of nodes it plays.
pub async fn watch_all(
    client: kube::Client,
    tx: SnapshotSender,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let api: Api<InferenceDeployment> = Api::all(client);
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = watcher(
        api,
        watcher::Config::default().timeout(super::WATCH_TIMEOUT_SECONDS),
    )
    .backoff(gogrid_runtime::kube_client::watch_backoff())
    .modify(gogrid_runtime::kube_client::without_managed_fields)
    .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut listing = false;
    loop {
        let mut changed = tokio::select! {
            event = stream.next() => match step(event, &mut listing) {
                Step::Changed => true,
                Step::Wait => false,
                Step::End => return Ok(()),
            },
            _ = shutdown.wait() => return Ok(()),
        };
        // Take what has already arrived too, then index once.
        for _ in 0..COALESCE {
            let Some(event) = stream.next().now_or_never() else {
                break;
            };
            match step(event, &mut listing) {
                Step::Changed => changed = true,
                Step::Wait => {}
                Step::End => return Ok(()),
            }
        }
        if !changed || listing {
            continue;
        }
        tx.send_replace(Some(Arc::new(by_node(&reader.state()))));
    }
}

/// Publish the deployments placed on `node`, from each snapshot `feed`
/// hands on, whenever they differ from the last published, until shutdown.
pub async fn publish(
    node: String,
    mut feed: SnapshotFeed,
    tx: watch::Sender<Vec<Desired>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    loop {
        let snapshot = feed.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let here = snapshot.get(&node).map_or(&[][..], Vec::as_slice);
            send_if_changed(&tx, &placed_on(&node, here));
        }
        tokio::select! {
            changed = feed.changed() => if changed.is_err() {
                // The watch ended (shutdown): nothing more will come.
                return Ok(());
            },
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::InferenceDeploymentStatus;
    use gogrid_crds::inference_deployment::NodePlacement;

    fn infd(name: &str, nodes: &[&str], canary_weight: Option<i32>) -> InferenceDeployment {
        let mut spec = serde_json::json!({
            "profile": "default",
            "model": {"name": name, "version": "v1", "source": {"path": "/m/v1.gguf"},
                      "format": "gguf", "task": "text-generation"},
        });
        if let Some(w) = canary_weight {
            spec["rollout"] = serde_json::json!({"strategy": "Canary", "canary": {
                "weight": w,
                "model": {"name": name, "version": "v2", "source": {"path": "/m/v2.gguf"},
                          "format": "gguf", "task": "text-generation"}}});
        }
        let mut d = InferenceDeployment::new(name, serde_json::from_value(spec).expect("spec"));
        d.metadata.namespace = Some("ml".into());
        d.status = Some(InferenceDeploymentStatus {
            placement: nodes
                .iter()
                .map(|n| NodePlacement {
                    node: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        d
    }

    #[tokio::test]
    async fn one_snapshot_feeds_every_node_its_own_deployments() {
        let (feed_tx, feed) = watch::channel(None);
        let shutdown = Shutdown::default();
        let mut nodes = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for node in ["n1", "n2", "n3"] {
            let (tx, rx) = watch::channel(Vec::new());
            tasks.spawn(publish(node.into(), feed.clone(), tx, shutdown.clone()));
            nodes.push(rx);
        }
        let names = |rx: &watch::Receiver<Vec<Desired>>| -> Vec<String> {
            rx.borrow().iter().map(|d| d.key.name.clone()).collect()
        };
        let all = [
            Arc::new(infd("a", &["n1", "n2", "n1"], None)),
            Arc::new(infd("b", &["n2"], None)),
        ];
        feed_tx.send_replace(Some(Arc::new(by_node(&all))));
        for rx in &mut nodes[..2] {
            rx.changed().await.expect("published");
        }
        assert_eq!(names(&nodes[0]), ["a"], "a listed twice is desired once");
        assert_eq!(names(&nodes[1]), ["a", "b"]);
        assert_eq!(names(&nodes[2]), Vec::<String>::new());
        // `a` moves off n1: n1 is told, n2 keeps both without a new publish.
        nodes[1].mark_unchanged();
        let all = [
            Arc::new(infd("a", &["n2"], None)),
            Arc::new(infd("b", &["n2"], None)),
        ];
        feed_tx.send_replace(Some(Arc::new(by_node(&all))));
        nodes[0].changed().await.expect("published");
        assert_eq!(names(&nodes[0]), Vec::<String>::new());
        tokio::task::yield_now().await;
        assert!(
            !nodes[1].has_changed().expect("open"),
            "an unchanged node is not woken"
        );
        shutdown.trigger();
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("publish");
        }
    }

    #[test]
    fn only_deployments_placed_on_the_node_are_desired() {
        let all = [infd("a", &["n1", "n2"], None), infd("b", &["n2"], None)];
        let names: Vec<_> = placed_on("n1", &all)
            .into_iter()
            .map(|d| d.key.name)
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(placed_on("n3", &all), []);
    }

    #[test]
    fn a_model_name_is_served_for_the_oldest_deployment_and_refused_for_the_others() {
        let at = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1_800_000_000 + s).expect("time"),
            ))
        };
        let mut old = infd("m", &["n1"], None);
        old.metadata.namespace = Some("zeta".into());
        old.metadata.creation_timestamp = at(0);
        let mut new = infd("m", &["n1"], None);
        new.metadata.creation_timestamp = at(60);
        let desired = placed_on("n1", &[new, old]);
        let refused: Vec<(String, Option<String>)> = desired
            .iter()
            .map(|d| (d.key.to_string(), d.refused.clone()))
            .collect();
        assert_eq!(
            refused[1],
            ("zeta/m".to_owned(), None),
            "the older one serves"
        );
        assert_eq!(refused[0].0, "ml/m");
        let why = refused[0].1.clone().expect("refused");
        assert!(
            why.contains("model name \"m\" is already served on this node by zeta/m"),
            "{why}"
        );
    }

    #[test]
    fn the_operators_split_wins_over_the_spec() {
        let mut d = infd("a", &["n1"], Some(10));
        let desired = placed_on("n1", std::slice::from_ref(&d));
        assert_eq!(
            desired[0].traffic.canary_weight, 10,
            "spec split before the operator"
        );
        d.status.as_mut().expect("status").traffic = Some(TrafficSplit {
            stable_version: "v1".into(),
            canary_version: Some("v2".into()),
            canary_weight: 0,
            preview_version: None,
            retained_version: None,
        });
        let desired = placed_on("n1", &[d.clone()]);
        assert_eq!(desired[0].traffic.canary_weight, 0);
        // A version retained after a switch stays loaded, unrouted.
        d.status.as_mut().expect("status").traffic = Some(TrafficSplit {
            stable_version: "v2".into(),
            retained_version: Some("v1".into()),
            ..TrafficSplit::default()
        });
        let loaded: Vec<String> = placed_on("n1", &[d.clone()])[0]
            .versions()
            .iter()
            .map(|m| m.version.clone())
            .collect();
        assert_eq!(loaded, ["v2", "v1"]);
    }

    #[test]
    fn a_canary_needs_both_versions_loaded_stable_first() {
        let d = placed_on("n1", &[infd("a", &["n1"], Some(30))]).remove(0);
        let versions: Vec<_> = d.versions().iter().map(|m| m.version.clone()).collect();
        assert_eq!(versions, ["v1", "v2"]);
        let stable_only = placed_on("n1", &[infd("a", &["n1"], None)]).remove(0);
        assert_eq!(stable_only.versions().len(), 1);
    }
}
