//! ResourceProfile controller: one agent DaemonSet per profile, and a status
//! with the matched nodes, ready agents, the effective policy and conditions.
//! Reconcile: validate -> build -> apply -> status.

pub mod apply;
pub mod build;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gogrid_crds::ResourceProfile;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::{Api, Resource, ResourceExt};

use crate::context::Context;
use crate::{Error, Result};

pub(crate) const CONTROLLER: &str = "resourceprofile";

/// How often relabelled nodes make the profiles be reconciled again.
const NODE_TRIGGER: Duration = Duration::from_millis(250);

/// Run until `shutdown` resolves.
pub async fn run(
    ctx: Context,
    profiles: ReflectHandle<ResourceProfile>,
    nodes: ReflectHandle<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let daemonsets: Api<DaemonSet> =
        Api::namespaced(ctx.client.clone(), &ctx.config.agent_namespace);
    let store = ctx.stores().profiles.clone();
    let all = store.clone();
    Controller::for_shared_stream(profiles, store)
        .owns_stream(super::watch(daemonsets).touched_objects())
        // A node's labels decide which profile it wins; every profile is
        // looked at again, at most every 250 ms while nodes are relabelled.
        .watches_shared_stream(
            super::throttled(super::label_changes(nodes), NODE_TRIGGER),
            move |_node| {
                all.state()
                    .into_iter()
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        // No debounce: a debounce restarts on every new trigger, and while a
        // thousand nodes were labelled for a new profile its DaemonSet waited
        // for the last label; the node triggers are throttled instead.
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Bring the profile's DaemonSet and status in line with its spec.
pub async fn reconcile(profile: Arc<ResourceProfile>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let now = jiff::Timestamp::now();
    let name = profile.name_any();
    let checked = validate::validate(&profile, now);
    let nodes = ctx.stores().nodes.state();
    let profiles = ctx.stores().profiles.state();
    let matched = build::matched_nodes(&name, &nodes, &profiles);
    let desired = build::daemonset(&profile, &ctx.config)?;
    let applied = apply::apply(&ctx, &desired).await?;
    let status = status::desired(&profile, &checked, &matched, applied.as_ref(), now);
    status::write(&ctx, &profile, status).await?;
    if let Err(e) = &checked {
        ctx.events
            .error(
                &profile.object_ref(&()),
                "ResolvePolicy",
                &Error::Policy(e.clone()),
            )
            .await;
    }
    ctx.reset_backoff(&format!("rp/{name}"));
    let next = gogrid_crds::policy::next_transition(&profile.spec, now)
        .and_then(|t| Duration::try_from(t.duration_since(now)).ok())
        .map_or(super::RESYNC, |d| {
            d.min(super::RESYNC) + Duration::from_secs(1)
        });
    Ok(Action::requeue(next))
}

fn error_policy(profile: Arc<ResourceProfile>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("rp/{}", profile.name_any());
    super::on_error(&ctx, CONTROLLER, &key, Some(profile.object_ref(&())), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Stores;
    use crate::fixtures::FakeApi;
    use gogrid_crds::{ResourceProfileSpec, conditions};
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn stores_with(profile: &ResourceProfile) -> Stores {
        let (profiles, mut pw) = reflector::store();
        pw.apply_watcher_event(&watcher::Event::Apply(profile.clone()));
        let (nodes, mut nw) = reflector::store();
        let mut node = Node::default();
        node.metadata.name = Some("gpu-1".into());
        nw.apply_watcher_event(&watcher::Event::Apply(node));
        Stores {
            nodes,
            profiles,
            ..Stores::empty()
        }
    }

    const DS: &str = "/apis/apps/v1/namespaces/gogrid-system/daemonsets/gogrid-agent-default";
    const RP: &str = "/apis/gogrid.io/v1alpha1/resourceprofiles/default";

    #[tokio::test]
    async fn a_reconcile_that_changes_nothing_sends_no_write() {
        let mut profile = ResourceProfile::new("default", ResourceProfileSpec::default());
        profile.metadata.uid = Some("uid-default".into());
        profile.metadata.generation = Some(1);
        let api = FakeApi::default();
        api.put(RP, serde_json::to_value(&profile).expect("json"));
        let ctx = Arc::new(Context::for_tests(api.client(), stores_with(&profile)));

        reconcile(Arc::new(profile.clone()), ctx.clone())
            .await
            .expect("first reconcile");
        let first = api.writes();
        assert_eq!(
            first,
            [format!("PATCH {DS}"), format!("PATCH {RP}/status")],
            "the first pass creates the DaemonSet and the status"
        );

        // The kubelet side: the DaemonSet now runs one ready agent.
        let mut ds = api.get(DS).expect("daemonset applied");
        ds["status"] = json!({"currentNumberScheduled": 1, "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": 1});
        api.put(DS, ds);
        profile.status =
            serde_json::from_value(api.get(RP).expect("status written")["status"].clone())
                .expect("status");
        api.clear_requests();
        reconcile(Arc::new(profile.clone()), ctx.clone())
            .await
            .expect("second reconcile");
        assert_eq!(
            api.writes(),
            [format!("PATCH {RP}/status")],
            "only the ready count changed"
        );

        profile.status =
            serde_json::from_value(api.get(RP).expect("status")["status"].clone()).expect("status");
        let status = profile.status.clone().expect("status");
        assert_eq!((status.matched_node_count, status.ready_agents), (1, 1));
        assert!(conditions::is_true(&status.conditions, conditions::READY));
        api.clear_requests();
        reconcile(Arc::new(profile), ctx.clone())
            .await
            .expect("third reconcile");
        assert_eq!(
            api.writes(),
            Vec::<String>::new(),
            "nothing changed, nothing written"
        );
        assert_eq!(ctx.metrics.writes(CONTROLLER, "DaemonSet"), 1);
    }

    #[tokio::test]
    async fn an_unresolvable_policy_is_reported_in_status_and_keeps_the_last_good_policy() {
        let mut profile = ResourceProfile::new("default", ResourceProfileSpec::default());
        profile.metadata.uid = Some("uid-default".into());
        profile.metadata.generation = Some(1);
        let api = FakeApi::default();
        api.put(RP, serde_json::to_value(&profile).expect("json"));
        let ctx = Arc::new(Context::for_tests(api.client(), stores_with(&profile)));
        reconcile(Arc::new(profile.clone()), ctx.clone())
            .await
            .expect("valid");
        profile.status =
            serde_json::from_value(api.get(RP).expect("status")["status"].clone()).expect("status");

        profile.metadata.generation = Some(2);
        profile.spec.schedule = vec![gogrid_crds::resource_profile::ScheduleWindow {
            name: None,
            days: vec![gogrid_crds::resource_profile::Weekday::Mon],
            start: "09:00".into(),
            end: "18:00".into(),
            time_zone: Some("Nowhere/Special".into()),
            preset: gogrid_crds::Preset::Conservative,
        }];
        reconcile(Arc::new(profile), ctx)
            .await
            .expect("invalid policy is a condition, not an error");
        let status: gogrid_crds::ResourceProfileStatus =
            serde_json::from_value(api.get(RP).expect("status")["status"].clone()).expect("status");
        let c =
            conditions::find(&status.conditions, conditions::POLICY_VALID).expect("PolicyValid");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidPolicy")
        );
        assert!(
            c.message.contains("spec.schedule[0].timeZone"),
            "{}",
            c.message
        );
        assert_eq!(
            status.effective_policy.map(|p| p.preset_in_force),
            Some(gogrid_crds::Preset::Default)
        );
        assert_eq!(status.observed_generation, Some(2));
    }
}
