//! Starts the controllers: waits for the CRDs, fills the read caches, then runs
//! the node labeller, the ResourceProfile and the InferenceDeployment controllers
//! until `stop` fires.

pub mod deployment;
pub mod node;
pub mod profile;

use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, future};
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use k8s_openapi::api::core::v1::Node;
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

/// Watcher settings of every controller and cache (errors back off 0.8 s to
/// 30 s, kube's default).
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// A reflector store fed by a background task until `stop`.
fn cache<K>(api: Api<K>, stop: &CancellationToken) -> reflector::Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher_config())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(|_| future::ready(()));
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stream => {}
            _ = stop.cancelled() => {}
        }
    });
    reader
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
    let stores = Stores {
        nodes: cache(Api::<Node>::all(client.clone()), &stop),
        profiles: cache(Api::<ResourceProfile>::all(client.clone()), &stop),
        gpunodes: cache(Api::<GpuNode>::all(client.clone()), &stop),
        deployments: cache(Api::<InferenceDeployment>::all(client.clone()), &stop),
    };
    tokio::select! {
        r = async {
            stores.nodes.wait_until_ready().await?;
            stores.profiles.wait_until_ready().await?;
            stores.gpunodes.wait_until_ready().await?;
            stores.deployments.wait_until_ready().await
        } => r.context("filling the caches")?,
        _ = stop.cancelled() => return Ok(()),
    }
    tracing::info!(?stores, "caches filled; starting controllers");
    ctx.stores = Some(stores);
    http.set_ready(true);

    let shutdown = {
        let stop = stop.clone();
        move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        }
    };
    tokio::join!(
        node::run(ctx.clone(), shutdown()),
        profile::run(ctx.clone(), shutdown()),
        deployment::run(ctx.clone(), shutdown()),
    );
    Ok(())
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
