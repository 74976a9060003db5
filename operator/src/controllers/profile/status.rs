//! The status of a profile, derived from what was applied, written only when it
//! changes.

use gogrid_crds::conditions::{self, Desired};
use gogrid_crds::resource_profile::ResourceProfileStatus;
use gogrid_crds::{EffectivePolicy, FieldError, ResourceProfile};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::CONTROLLER;
use crate::context::Context;
use crate::{Error, Result};

/// Most node names listed in status (the count is always exact).
pub const MAX_LISTED_NODES: usize = 100;

/// The status the profile should have.
pub fn desired(
    profile: &ResourceProfile,
    policy: &Result<EffectivePolicy, FieldError>,
    matched: &[String],
    daemonset: Option<&DaemonSet>,
    now: jiff::Timestamp,
) -> ResourceProfileStatus {
    let current = profile.status.clone().unwrap_or_default();
    let ds_status = daemonset.and_then(|d| d.status.as_ref());
    let ready = ds_status.map_or(0, |s| s.number_ready);
    let scheduled = ds_status.map_or(0, |s| s.desired_number_scheduled);
    let matched_count = i32::try_from(matched.len()).unwrap_or(i32::MAX);

    let policy_condition = match policy {
        Ok(p) => Desired::yes(
            conditions::POLICY_VALID,
            "Resolved",
            format!(
                "preset {} in force{}",
                p.preset_in_force.as_str(),
                p.window
                    .as_ref()
                    .map(|w| format!(" (window {w})"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => Desired::no(conditions::POLICY_VALID, "InvalidPolicy", e.to_string()),
    };
    let ready_condition = if matched.is_empty() {
        Desired::no(
            conditions::READY,
            "NoMatchingNodes",
            "no node matches the profile's nodeSelector (or a higher-priority profile wins them)",
        )
    } else if ready >= matched_count && scheduled >= matched_count {
        Desired::yes(
            conditions::READY,
            "AgentsReady",
            format!("{ready} of {matched_count} agents ready"),
        )
    } else {
        Desired::no(
            conditions::READY,
            "AgentsStarting",
            format!("{ready} of {matched_count} agents ready"),
        )
    };
    let conditions = conditions::merge(
        &current.conditions,
        &[policy_condition, ready_condition],
        profile.metadata.generation,
        now,
    );
    ResourceProfileStatus {
        observed_generation: profile.metadata.generation,
        matched_nodes: matched.iter().take(MAX_LISTED_NODES).cloned().collect(),
        matched_node_count: matched_count,
        ready_agents: ready,
        // An invalid change keeps reporting the last policy that resolved: agents keep enforcing it.
        effective_policy: policy.as_ref().ok().cloned().or(current.effective_policy),
        conditions,
    }
}

/// Patch the status subresource if it differs from what the object has.
pub async fn write(
    ctx: &Context,
    profile: &ResourceProfile,
    status: ResourceProfileStatus,
) -> Result<bool> {
    if profile.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let name = profile.name_any();
    let api: Api<ResourceProfile> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": "gogrid.io/v1alpha1", "kind": "ResourceProfile",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(gogrid_crds::labels::OPERATOR_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "writing status of ResourceProfile {name}"
    )))?;
    ctx.metrics.write(CONTROLLER, "ResourceProfileStatus");
    Ok(true)
}
