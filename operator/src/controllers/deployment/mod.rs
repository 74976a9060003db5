//! InferenceDeployment controller: placement on the profile's nodes, the traffic
//! split, main and preview Services with their EndpointSlices, a ServiceMonitor,
//! and status. Reconcile: validate -> place -> build -> apply -> status.

pub mod apply;
pub mod build;
pub mod placement;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gogrid_crds::conditions;
use gogrid_crds::labels::PROFILE_LABEL;
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::{Api, Resource, ResourceExt};

use crate::context::Context;
use crate::{Error, Result};

pub(crate) const CONTROLLER: &str = "inferencedeployment";

/// How often a healthy deployment is looked at again (agent heartbeats go stale
/// without any watch event).
const REFRESH: Duration = Duration::from_secs(30);

fn refs_where(
    store: &Store<InferenceDeployment>,
    keep: impl Fn(&InferenceDeployment) -> bool,
) -> Vec<ObjectRef<InferenceDeployment>> {
    store
        .state()
        .iter()
        .filter(|d| keep(d))
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

fn placed_on(d: &InferenceDeployment, node: &str) -> bool {
    d.status
        .iter()
        .flat_map(|s| &s.placement)
        .any(|p| p.node == node)
}

/// Whether a deployment may gain a node from the report of a node it is not
/// placed on: it has no placement yet, or fewer nodes than it wants (Degraded
/// for InsufficientCapacity). One that is only not Ready yet waits on its own
/// nodes' reports; mapping every GpuNode change to every deployment not Ready
/// made a thousand deployments created at once be reconciled again on each of
/// a thousand agents' reports, until the API server answered 504.
fn short_of_nodes(d: &InferenceDeployment) -> bool {
    d.status.as_ref().is_none_or(|s| {
        conditions::find(&s.conditions, conditions::DEGRADED)
            .is_some_and(|c| c.status == "True" && c.reason == INSUFFICIENT_CAPACITY)
    })
}

/// The Degraded reason of a deployment placed on fewer nodes than it wants.
pub(crate) const INSUFFICIENT_CAPACITY: &str = "InsufficientCapacity";

/// Reconciles in flight at once: a burst (a thousand deployments created, a
/// profile's nodes all reporting) queues here instead of at the API server.
const CONCURRENCY: u16 = 32;

/// The shared watches the controller follows.
pub struct Streams {
    /// Its own kind.
    pub deployments: ReflectHandle<InferenceDeployment>,
    /// Agents' readiness, budgets and stats.
    pub gpunodes: ReflectHandle<GpuNode>,
    /// Profiles (a deployment names one).
    pub profiles: ReflectHandle<ResourceProfile>,
    /// Nodes (placement).
    pub nodes: ReflectHandle<Node>,
    /// Its Services.
    pub services: ReflectHandle<Service>,
    /// Its EndpointSlices.
    pub slices: ReflectHandle<EndpointSlice>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// Run until `shutdown` resolves.
pub async fn run(
    ctx: Context,
    streams: Streams,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let store = ctx.stores().deployments.clone();
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    Controller::for_shared_stream(streams.deployments, store)
        .owns_shared_stream(streams.services)
        .owns_shared_stream(streams.slices)
        .watches_shared_stream(super::content_changes(streams.gpunodes), move |g| {
            let node = g.name_any();
            refs_where(&s1, |d| placed_on(d, &node) || short_of_nodes(d))
        })
        .watches_shared_stream(streams.profiles, move |rp| {
            let name = rp.name_any();
            refs_where(&s2, |d| d.spec.profile == name)
        })
        // A claim created (or deleted) after the deployment that names it.
        .watches_stream(
            super::watch(Api::<PersistentVolumeClaim>::all(client.clone())).touched_objects(),
            move |pvc| {
                let (ns, name) = (pvc.namespace(), pvc.name_any());
                refs_where(&s4, |d| {
                    d.namespace() == ns && claims(&d.spec).iter().any(|(_, c)| *c == name)
                })
            },
        )
        .watches_shared_stream(super::label_changes(streams.nodes), move |n| {
            let node = n.name_any();
            let profile = n.labels().get(PROFILE_LABEL).cloned();
            refs_where(&s3, |d| {
                placed_on(d, &node) || Some(&d.spec.profile) == profile.as_ref()
            })
        })
        // A short debounce folds a burst of GpuNode writes (every agent
        // reporting a new split at once) into one reconcile, without adding
        // much to the time an edit takes to reach the agents.
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(CONCURRENCY),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The PersistentVolumeClaims the spec's model sources name, with the field
/// that names each.
fn claims(spec: &gogrid_crds::InferenceDeploymentSpec) -> Vec<(String, String)> {
    let models = [
        ("spec.model", Some(&spec.model)),
        ("spec.rollout.canary.model", spec.canary_model()),
        ("spec.rollout.blueGreen.preview.model", spec.preview_model()),
    ];
    models
        .into_iter()
        .filter_map(|(field, m)| {
            let pvc = m?.source.pvc.as_ref()?;
            Some((
                format!("{field}.source.pvc.claimName"),
                pvc.claim_name.clone(),
            ))
        })
        .collect()
}

/// The claims the spec names that do not exist (the API server cannot check
/// a reference; the deployment says so in a condition and an Event).
async fn missing_claims(
    ctx: &Context,
    ns: &str,
    spec: &gogrid_crds::InferenceDeploymentSpec,
) -> Result<Vec<(String, String)>> {
    let wanted = claims(spec);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut missing = Vec::new();
    for (field, claim) in wanted {
        let found = api.get_opt(&claim).await.map_err(Error::kube(format!(
            "reading PersistentVolumeClaim {ns}/{claim}"
        )))?;
        if found.is_none() {
            missing.push((field, claim));
        }
    }
    Ok(missing)
}

/// How long the controller waits for more events before reconciling.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Bring placement, children and status in line with the spec.
pub async fn reconcile(infd: Arc<InferenceDeployment>, ctx: Arc<Context>) -> Result<Action> {
    let uid = infd.metadata.uid.clone().unwrap_or_default();
    if ctx.is_gone(&uid) {
        return Ok(Action::await_change());
    }
    match reconcile_live(infd, ctx.clone()).await {
        // Deleted while the cache (a watch not caught up yet) still held it:
        // stop, or each reconcile until the cache learns it would re-create
        // children that the garbage collector then removes again.
        Err(Error::Gone) => {
            ctx.mark_gone(&uid);
            tracing::debug!(%uid, "deployment deleted at the API server; not reconciled again");
            Ok(Action::await_change())
        }
        other => other,
    }
}

async fn reconcile_live(infd: Arc<InferenceDeployment>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = jiff::Timestamp::now();
    let ns = infd
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = infd.name_any();
    let reference = infd.object_ref(&());
    let before = infd.status.clone().unwrap_or_default();

    let need = match validate::validate(&infd) {
        Ok(need) => need,
        Err(e) => {
            ctx.metrics.error(CONTROLLER, &e);
            let status = status::invalid(&infd, &e, now);
            if status::write(&ctx, &infd, &status).await?
                && became_degraded(&before.conditions, &status.conditions)
            {
                ctx.events.error(&reference, "Validate", &e).await;
            }
            return Ok(Action::await_change());
        }
    };

    let stores = ctx.stores();
    let profile_found = stores
        .profiles
        .get(&ObjectRef::new(&infd.spec.profile))
        .is_some();
    let nodes = stores.nodes.state();
    let gpunodes = stores.gpunodes.state();
    let deployments = stores.deployments.state();
    let candidates = placement::candidates(
        &infd.spec.profile,
        (&ns, &name),
        &nodes,
        &gpunodes,
        &deployments,
    );
    let replicas = infd.spec.placement.as_ref().and_then(|p| p.replicas);
    let placed = placement::place(replicas, need, &before.placement, &candidates);

    let stale = ctx.config.agent_stale_seconds;
    let effective = build::traffic(&infd, &placed.nodes, &gpunodes, now, stale);
    let (traffic, rollout) = (effective.traffic, effective.rollout);
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut ready = 0;
    for role in build::roles(&traffic) {
        let version = match role {
            build::Role::Main => traffic.stable_version.clone(),
            build::Role::Preview => traffic.preview_version.clone().unwrap_or_default(),
        };
        let endpoints = build::endpoints(&infd, &placed.nodes, &gpunodes, &version, now, stale);
        if role == build::Role::Main {
            ready = i32::try_from(endpoints.iter().filter(|e| e.ready).count()).unwrap_or(i32::MAX);
        }
        slices.extend(build::endpoint_slices(&infd, role, &endpoints)?);
        services.push((role, build::service(&infd, role, &ctx.config)?));
    }
    let service_monitor = infd
        .spec
        .wants_service_monitor()
        .then(|| build::service_monitor(&infd))
        .transpose()?;
    let children = apply::Children {
        services,
        slices,
        service_monitor,
    };
    apply::apply(&ctx, &infd, &children).await?;

    let failures = pipeline_failures(&infd, &placed.nodes, &gpunodes);
    let missing_claims = missing_claims(&ctx, &ns, &infd.spec).await?;
    let observed = status::Observed {
        profile_found,
        missing_claims,
        placement: placed,
        traffic,
        rollout,
        ready,
        failures,
    };
    let status = status::desired(&infd, &observed, now);
    if status::write(&ctx, &infd, &status).await? {
        announce(&ctx, &reference, &before, &status).await;
    }
    ctx.metrics
        .observe_rollout(&ns, &name, before.rollout.as_ref(), &status);
    let existing: std::collections::BTreeSet<crate::metrics::DeploymentLabels> = deployments
        .iter()
        .map(|d| crate::metrics::DeploymentLabels {
            namespace: d.namespace().unwrap_or_default(),
            name: d.name_any(),
        })
        .collect();
    ctx.metrics.forget_deployments_except(&existing);
    ctx.reset_backoff(&format!("infd/{ns}/{name}"));
    // A step that ends or a switch that falls due is looked at on time.
    Ok(Action::requeue(
        effective.next.map_or(REFRESH, |n| n.min(REFRESH)),
    ))
}

fn pipeline_failures(
    infd: &InferenceDeployment,
    placement: &[gogrid_crds::inference_deployment::NodePlacement],
    gpunodes: &[Arc<GpuNode>],
) -> Vec<status::Failure> {
    let ns = infd.namespace().unwrap_or_default();
    let name = infd.name_any();
    placement
        .iter()
        .filter_map(|p| {
            let g = gpunodes.iter().find(|g| g.name_any() == p.node)?;
            let failed = g.status.as_ref()?.pipelines.iter().find(|pl| {
                pl.namespace == ns && pl.deployment == name && !pl.ready && pl.message.is_some()
            })?;
            Some(status::Failure {
                node: p.node.clone(),
                version: failed.version.clone(),
                reason: failed.reason.clone(),
                message: failed.message.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn became_degraded(
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> bool {
    let reason = |cs| {
        conditions::find(cs, conditions::DEGRADED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone())
    };
    let now = reason(after);
    now.is_some() && now != reason(before)
}

/// Events for what people want to hear about: a new problem, a new placement.
async fn announce(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    before: &gogrid_crds::InferenceDeploymentStatus,
    after: &gogrid_crds::InferenceDeploymentStatus,
) {
    if became_degraded(&before.conditions, &after.conditions)
        && let Some(c) = conditions::find(&after.conditions, conditions::DEGRADED)
    {
        ctx.events
            .warning(reference, &c.reason, "Place", &c.message)
            .await;
    }
    // The rollout moved: a step, a switch, a rollback.
    let moved = |s: &gogrid_crds::InferenceDeploymentStatus| {
        s.rollout
            .as_ref()
            .map(|r| (r.phase, r.step, r.version.clone()))
    };
    if moved(before) != moved(after)
        && let Some(r) = &after.rollout
        && let Some(message) = &r.message
    {
        let reason = match r.phase {
            gogrid_crds::inference_deployment::RolloutPhase::Canary => "RolloutStep",
            gogrid_crds::inference_deployment::RolloutPhase::Preview => "Preview",
            gogrid_crds::inference_deployment::RolloutPhase::Promoted => "Promoted",
            gogrid_crds::inference_deployment::RolloutPhase::RolledBack => "RolledBack",
            gogrid_crds::inference_deployment::RolloutPhase::Stable => "Stable",
        };
        // The recorder folds Events of one reason and action into a series
        // that keeps the first note: each step gets its own action.
        let action = match r.step {
            Some(step) if r.phase == gogrid_crds::inference_deployment::RolloutPhase::Canary => {
                format!("RolloutStep{}", step + 1)
            }
            _ => "Rollout".to_owned(),
        };
        if r.phase == gogrid_crds::inference_deployment::RolloutPhase::RolledBack {
            ctx.events
                .warning(reference, reason, &action, message)
                .await;
        } else {
            ctx.events.normal(reference, reason, &action, message).await;
        }
    }
    if before
        .placement
        .iter()
        .map(|p| &p.node)
        .ne(after.placement.iter().map(|p| &p.node))
    {
        let nodes: Vec<&str> = after.placement.iter().map(|p| p.node.as_str()).collect();
        let note = if nodes.is_empty() {
            "placed on no node".to_owned()
        } else {
            format!("placed on {}", nodes.join(", "))
        };
        ctx.events.normal(reference, "Placed", "Place", &note).await;
    }
}

fn error_policy(infd: Arc<InferenceDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "infd/{}/{}",
        infd.namespace().unwrap_or_default(),
        infd.name_any()
    );
    super::on_error(&ctx, CONTROLLER, &key, Some(infd.object_ref(&())), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Stores;
    use crate::fixtures::FakeApi;
    use gogrid_crds::ResourceProfileSpec;
    use kube::runtime::{reflector, watcher};
    use std::collections::BTreeMap;

    fn stores(deployment: &InferenceDeployment, heartbeat: &str) -> Stores {
        let (nodes, mut nw) = reflector::store();
        let mut node = Node::default();
        node.metadata.name = Some("gpu-1".into());
        node.metadata.labels = Some(BTreeMap::from([(
            PROFILE_LABEL.to_owned(),
            "default".to_owned(),
        )]));
        nw.apply_watcher_event(&watcher::Event::Apply(node));
        let (profiles, mut pw) = reflector::store();
        pw.apply_watcher_event(&watcher::Event::Apply(ResourceProfile::new(
            "default",
            ResourceProfileSpec::default(),
        )));
        let (gpunodes, mut gw) = reflector::store();
        let g = build::tests::gpunode("gpu-1", "10.244.1.2", &["v1"], heartbeat);
        gw.apply_watcher_event(&watcher::Event::Apply((*g).clone()));
        let (deployments, mut dw) = reflector::store();
        dw.apply_watcher_event(&watcher::Event::Apply(deployment.clone()));
        Stores {
            nodes,
            profiles,
            gpunodes,
            deployments,
            ..Stores::empty()
        }
    }

    /// `stores` with the children's caches as the watches fill them from
    /// what the API server holds now.
    fn with_children(stores: Stores, api: &FakeApi) -> Stores {
        fn cache<K>(object: Option<serde_json::Value>) -> reflector::Store<K>
        where
            K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
        {
            let (store, mut writer) = reflector::store();
            if let Some(o) = object {
                let o: K = serde_json::from_value(o).expect("a child");
                writer.apply_watcher_event(&watcher::Event::Apply(o));
            }
            store
        }
        Stores {
            services: cache(api.get(SVC)),
            slices: cache(api.get(SLICE)),
            ..stores
        }
    }

    #[test]
    fn only_a_deployment_without_placement_or_short_of_nodes_follows_other_nodes_reports() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let degraded = |reason: &str| {
            let mut d = build::tests::deployment("chat");
            d.status = Some(gogrid_crds::InferenceDeploymentStatus {
                conditions: vec![Condition {
                    type_: conditions::DEGRADED.into(),
                    status: "True".into(),
                    reason: reason.into(),
                    message: String::new(),
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ),
                    observed_generation: None,
                }],
                ..Default::default()
            });
            d
        };
        let mut new = build::tests::deployment("chat");
        new.status = None;
        assert!(short_of_nodes(&new), "not placed yet");
        assert!(short_of_nodes(&degraded(INSUFFICIENT_CAPACITY)));
        assert!(
            !short_of_nodes(&degraded("PipelineFailed")),
            "a failure on its own nodes is their reports' business"
        );
        let mut placed = build::tests::deployment("chat");
        placed.status = Some(Default::default());
        assert!(
            !short_of_nodes(&placed),
            "placed, not Ready yet: its own nodes' reports"
        );
    }

    const SVC: &str = "/api/v1/namespaces/team-a/services/chat";
    const SLICE: &str = "/apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices/chat-gogrid-0";
    const INFD: &str = "/apis/gogrid.io/v1alpha1/namespaces/team-a/inferencedeployments/chat";

    #[tokio::test]
    async fn a_reconcile_that_changes_nothing_sends_no_write() {
        let mut infd = build::tests::deployment("chat");
        let api = FakeApi::default();
        api.put(INFD, serde_json::to_value(&infd).expect("json"));
        let heartbeat = jiff::Timestamp::now().to_string();
        let ctx = Arc::new(Context::for_tests(api.client(), stores(&infd, &heartbeat)));

        reconcile(Arc::new(infd.clone()), ctx.clone())
            .await
            .expect("first reconcile");
        assert_eq!(
            api.writes(),
            [
                format!("PATCH {SVC}"),
                format!("PATCH {SLICE}"),
                format!("PATCH {INFD}/status")
            ],
            "the first pass creates the Service, its EndpointSlice and the status"
        );
        let slice = api.get(SLICE).expect("slice");
        assert_eq!(slice["endpoints"][0]["addresses"][0], "10.244.1.2");
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);

        infd.status = serde_json::from_value(api.get(INFD).expect("status")["status"].clone())
            .expect("status");
        let status = infd.status.clone().expect("status");
        assert_eq!((status.replicas, status.ready_replicas), (1, 1));
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        api.clear_requests();
        let ctx = Arc::new(Context::for_tests(
            api.client(),
            with_children(stores(&infd, &heartbeat), &api),
        ));
        reconcile(Arc::new(infd), ctx)
            .await
            .expect("second reconcile");
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "nothing changed, nothing written"
        );
    }

    #[tokio::test]
    async fn with_service_monitors_cached_a_resync_reads_none_from_the_api_server() {
        const SM: &str = "/apis/monitoring.coreos.com/v1/namespaces/team-a/servicemonitors/chat";
        let mut infd = build::tests::deployment("chat");
        let api = FakeApi::default();
        api.put(INFD, serde_json::to_value(&infd).expect("json"));
        let heartbeat = jiff::Timestamp::now().to_string();
        let monitors = |api: &FakeApi| {
            let cached = api
                .get(SM)
                .into_iter()
                .map(|m| serde_json::from_value(m).expect("a monitor"));
            crate::context::ServiceMonitors::filled_with(api.client(), cached.collect())
        };
        let cached = Stores {
            service_monitors: monitors(&api),
            ..stores(&infd, &heartbeat)
        };
        let ctx = Context::for_tests(api.client(), cached).serving_service_monitors();
        reconcile(Arc::new(infd.clone()), Arc::new(ctx))
            .await
            .expect("first reconcile");
        assert!(
            api.writes().contains(&format!("PATCH {SM}")),
            "the first pass creates the ServiceMonitor: {:?}",
            api.writes()
        );
        assert!(
            !api.requests().contains(&format!("GET {SM}")),
            "what exists is read from the cache"
        );

        infd.status = serde_json::from_value(api.get(INFD).expect("status")["status"].clone())
            .expect("status");
        api.clear_requests();
        let cached = Stores {
            service_monitors: monitors(&api),
            ..with_children(stores(&infd, &heartbeat), &api)
        };
        let ctx = Context::for_tests(api.client(), cached).serving_service_monitors();
        reconcile(Arc::new(infd), Arc::new(ctx))
            .await
            .expect("second reconcile");
        assert_eq!(
            api.requests(),
            Vec::<String>::new(),
            "a resync of a deployment whose children are as wanted sends no request"
        );
    }

    #[tokio::test]
    async fn an_invalid_edit_leaves_the_serving_children_alone_and_says_why() {
        let mut infd = build::tests::deployment("chat");
        let api = FakeApi::default();
        api.put(INFD, serde_json::to_value(&infd).expect("json"));
        let heartbeat = jiff::Timestamp::now().to_string();
        let ctx = Arc::new(Context::for_tests(api.client(), stores(&infd, &heartbeat)));
        reconcile(Arc::new(infd.clone()), ctx.clone())
            .await
            .expect("first reconcile");
        infd.status = serde_json::from_value(api.get(INFD).expect("status")["status"].clone())
            .expect("status");
        let slice_before = api.get(SLICE);

        infd.metadata.generation = Some(2);
        infd.spec.model.source.path = Some("/models/../../etc/shadow".into());
        api.clear_requests();
        let action = reconcile(Arc::new(infd), ctx)
            .await
            .expect("an invalid spec is a condition, not a retry");
        assert_eq!(action, Action::await_change());
        assert_eq!(
            api.writes(),
            [format!("PATCH {INFD}/status")],
            "only the status is written"
        );
        assert_eq!(
            api.get(SLICE),
            slice_before,
            "the EndpointSlice of the serving version is untouched"
        );
        let status: gogrid_crds::InferenceDeploymentStatus =
            serde_json::from_value(api.get(INFD).expect("status")["status"].clone())
                .expect("status");
        let c = conditions::find(&status.conditions, conditions::DEGRADED).expect("Degraded");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(
            c.message.contains("spec.model.source.path"),
            "{}",
            c.message
        );
        assert_eq!(status.ready_replicas, 1);
    }
}
