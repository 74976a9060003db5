//! Node labeller: gives each Node the label `gogrid.io/profile=<winner>` of the
//! ResourceProfile that wins it, and removes the label when none does.

pub mod assign;

use std::sync::Arc;

use futures::StreamExt;
use gogrid_crds::ResourceProfile;
use gogrid_crds::labels::{OPERATOR_MANAGER, PROFILE_LABEL};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::context::Context;
use crate::{Error, Result};

const CONTROLLER: &str = "node";

/// Node patches in flight at once. A new profile that matches a thousand nodes
/// made a thousand patches at once, and the profile's DaemonSet, applied by
/// the same client in the same API priority flow, waited behind all of them
/// (9.7 s at 1000 nodes); with a few in flight it goes through between them.
const CONCURRENCY: u16 = 8;

/// Run until `shutdown` resolves, on the shared watches of Nodes and profiles.
pub async fn run(
    ctx: Context,
    nodes: ReflectHandle<Node>,
    profiles: ReflectHandle<ResourceProfile>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let node_store = ctx.stores().nodes.clone();
    let all_nodes = node_store.clone();
    Controller::for_shared_stream(nodes, node_store)
        .watches_shared_stream(profiles, move |_profile| {
            // Any profile change can move any node.
            all_nodes
                .state()
                .into_iter()
                .map(|n| ObjectRef::from_obj(&*n))
                .collect::<Vec<_>>()
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The label the node should carry, applied if it differs.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    ctx.caches_ready().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let profiles = ctx.stores().profiles.state();
    let desired = assign::winner(node.labels(), profiles.iter().map(|p| p.as_ref()));
    let current = node.labels().get(PROFILE_LABEL).map(String::as_str);
    if desired == current {
        return Ok(Action::requeue(super::RESYNC));
    }
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    match desired {
        Some(profile) => {
            let patch = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {PROFILE_LABEL: profile}}
            });
            api.patch(
                &name,
                &PatchParams::apply(OPERATOR_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::kube(format!("labelling node {name}")))?;
            tracing::info!(node = %name, profile, "node joined profile");
        }
        None => {
            let patch = json!({"metadata": {"labels": {PROFILE_LABEL: null}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::kube(format!("unlabelling node {name}")))?;
            tracing::info!(node = %name, previous = current, "node left its profile");
        }
    }
    ctx.metrics.write(CONTROLLER, "Node");
    Ok(Action::requeue(super::RESYNC))
}

fn error_policy(node: Arc<Node>, error: &Error, ctx: Arc<Context>) -> Action {
    // Nodes are not ours: the failure goes to logs and metrics, not to the Node's Events.
    super::on_error(
        &ctx,
        CONTROLLER,
        &format!("node/{}", node.name_any()),
        None,
        error,
    )
}
