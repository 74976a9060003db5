//! Writes the profile's DaemonSet when it differs from the desired one.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;

use super::CONTROLLER;
use crate::context::Context;
use crate::{Error, Result, apply as ssa};

/// Ensure the DaemonSet; returns the object as last seen (for its status).
pub async fn apply(ctx: &Context, desired: &DaemonSet) -> Result<Option<DaemonSet>> {
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.config.agent_namespace);
    let name = desired
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let existing = ssa::get_opt(&api, name).await?;
    if ssa::apply(&api, desired, existing.as_ref()).await? {
        ctx.metrics.write(CONTROLLER, "DaemonSet");
        tracing::info!(daemonset = name, "applied agent DaemonSet");
    }
    Ok(existing)
}
