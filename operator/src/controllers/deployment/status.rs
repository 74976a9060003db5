//! The status of an InferenceDeployment, derived from what was placed and
//! applied, written only when it changes.

use gogrid_crds::InferenceDeployment;
use gogrid_crds::conditions::{self, Desired};
use gogrid_crds::inference_deployment::{
    InferenceDeploymentStatus, RolloutPhase, RolloutStatus, TrafficSplit,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::CONTROLLER;
use super::placement::Placement;
use crate::context::Context;
use crate::{Error, Result};

/// What a reconcile found, for status.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Whether the named ResourceProfile exists.
    pub profile_found: bool,
    /// PersistentVolumeClaims the spec names that do not exist: the field
    /// that names each, and the claim.
    pub missing_claims: Vec<(String, String)>,
    /// The placement.
    pub placement: Placement,
    /// The split the agents are told to route.
    pub traffic: TrafficSplit,
    /// The rollout phase.
    pub rollout: RolloutStatus,
    /// Placed nodes whose agent reports the stable version ready.
    pub ready: i32,
    /// Pipelines agents report as failed.
    pub failures: Vec<Failure>,
}

/// A pipeline an agent reports as failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The node.
    pub node: String,
    /// The version.
    pub version: String,
    /// The agent's one-word reason (`InsufficientVram`, `ModelNameTaken`,
    /// `LoadFailed`), if it gave one.
    pub reason: Option<String>,
    /// The agent's message.
    pub message: String,
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status after a reconcile that got through validation.
pub fn desired(
    infd: &InferenceDeployment,
    o: &Observed,
    now: jiff::Timestamp,
) -> InferenceDeploymentStatus {
    let current = infd.status.clone().unwrap_or_default();
    let placed = count(o.placement.nodes.len());
    let wanted = count(o.placement.wanted);
    let profile = &infd.spec.profile;

    let degraded = if !o.profile_found {
        Desired::yes(
            conditions::DEGRADED,
            "ProfileNotFound",
            format!("ResourceProfile {profile:?} does not exist"),
        )
    } else if let Some((field, claim)) = o.missing_claims.first() {
        let ns = infd.metadata.namespace.as_deref().unwrap_or_default();
        Desired::yes(
            conditions::DEGRADED,
            "PvcNotFound",
            format!("{field}: PersistentVolumeClaim {claim:?} does not exist in namespace {ns}"),
        )
    } else if let Some(s) = &o.placement.shortfall {
        Desired::yes(
            conditions::DEGRADED,
            super::INSUFFICIENT_CAPACITY,
            s.message(),
        )
    } else if let Some(Failure {
        node,
        version,
        reason,
        message,
    }) = o.failures.first()
    {
        let more = if o.failures.len() > 1 {
            format!(" (and {} more nodes)", o.failures.len() - 1)
        } else {
            String::new()
        };
        let stable = &infd.spec.model.version;
        let reason = reason
            .as_deref()
            .filter(|r| matches!(*r, "InsufficientVram" | "ModelNameTaken"))
            .unwrap_or("PipelineFailed");
        let message = if reason == "InsufficientVram" && version != stable {
            // A rollout that does not fit next to the version serving waits.
            format!(
                "node {node} cannot hold {version} next to {stable}: {message}; the rollout waits: {version} gets no traffic there, and steps and automatic promotion hold{more}"
            )
        } else {
            format!("node {node}: {version}: {message}{more}")
        };
        Desired::yes(conditions::DEGRADED, reason, message)
    } else {
        Desired::no(conditions::DEGRADED, "AsExpected", "no problem found")
    };
    let ready = if !o.profile_found {
        Desired::no(
            conditions::READY,
            "ProfileNotFound",
            format!("ResourceProfile {profile:?} does not exist"),
        )
    } else if placed == 0 {
        Desired::no(
            conditions::READY,
            "NoNodes",
            format!("no node of profile {profile:?} can take the model"),
        )
    } else if o.ready >= placed && placed >= wanted {
        Desired::yes(
            conditions::READY,
            "AllReplicasReady",
            format!(
                "{} of {placed} agents serve {}",
                o.ready, o.traffic.stable_version
            ),
        )
    } else {
        Desired::no(
            conditions::READY,
            "WaitingForAgents",
            format!(
                "{} of {wanted} agents serve {}",
                o.ready, o.traffic.stable_version
            ),
        )
    };
    let progressing = match o.rollout.phase {
        RolloutPhase::Canary | RolloutPhase::Preview => Desired::yes(
            conditions::PROGRESSING,
            "RolloutInProgress",
            o.rollout.message.clone().unwrap_or_default(),
        ),
        RolloutPhase::RolledBack => Desired::no(
            conditions::PROGRESSING,
            "RolledBack",
            o.rollout.message.clone().unwrap_or_default(),
        ),
        _ if o.ready < placed => Desired::yes(
            conditions::PROGRESSING,
            "Loading",
            format!("{} of {placed} agents ready", o.ready),
        ),
        _ => Desired::no(conditions::PROGRESSING, "Complete", "nothing is changing"),
    };
    InferenceDeploymentStatus {
        observed_generation: infd.metadata.generation,
        placement: o.placement.nodes.clone(),
        replicas: placed,
        ready_replicas: o.ready,
        traffic: Some(o.traffic.clone()),
        rollout: Some(o.rollout.clone()),
        conditions: conditions::merge(
            &current.conditions,
            &[degraded, ready, progressing],
            infd.metadata.generation,
            now,
        ),
    }
}

/// The status after a spec the operator refuses: everything applied before stays
/// as it is (the version already serving keeps serving); Degraded says why.
pub fn invalid(
    infd: &InferenceDeployment,
    error: &Error,
    now: jiff::Timestamp,
) -> InferenceDeploymentStatus {
    let current = infd.status.clone().unwrap_or_default();
    let degraded = Desired::yes(conditions::DEGRADED, error.reason(), error.to_string());
    InferenceDeploymentStatus {
        observed_generation: infd.metadata.generation,
        conditions: conditions::merge(
            &current.conditions,
            &[degraded],
            infd.metadata.generation,
            now,
        ),
        ..current
    }
}

/// Patch the status subresource if it differs from what the object has.
pub async fn write(
    ctx: &Context,
    infd: &InferenceDeployment,
    status: &InferenceDeploymentStatus,
) -> Result<bool> {
    if infd.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let name = infd.name_any();
    let ns = infd.namespace().unwrap_or_default();
    let api: Api<InferenceDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment", "status": status});
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(gogrid_crds::labels::OPERATOR_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    match written {
        // Deleted while the cache still held it (a watch that has not caught
        // up yet): the caller stops reconciling it.
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(Error::Gone),
        other => {
            other.map_err(Error::kube(format!(
                "writing status of InferenceDeployment {ns}/{name}"
            )))?;
        }
    }
    ctx.metrics.write(CONTROLLER, "InferenceDeploymentStatus");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::build::tests::deployment;
    use crate::controllers::deployment::placement::Shortfall;
    use gogrid_crds::inference_deployment::NodePlacement;

    fn observed(placed: &[&str], ready: i32) -> Observed {
        Observed {
            profile_found: true,
            missing_claims: Vec::new(),
            placement: Placement {
                nodes: placed
                    .iter()
                    .map(|n| NodePlacement {
                        node: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                wanted: placed.len(),
                shortfall: None,
            },
            traffic: TrafficSplit {
                stable_version: "v1".into(),
                ..Default::default()
            },
            rollout: RolloutStatus::default(),
            ready,
            failures: vec![],
        }
    }

    fn cond<'a>(s: &'a InferenceDeploymentStatus, t: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&s.conditions, t).expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn all_agents_ready_means_ready_and_not_degraded() {
        let s = desired(
            &deployment("chat"),
            &observed(&["a", "b"], 2),
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(cond(&s, "Ready"), ("True", "AllReplicasReady"));
        assert_eq!(cond(&s, "Degraded"), ("False", "AsExpected"));
        assert_eq!(cond(&s, "Progressing"), ("False", "Complete"));
        assert_eq!(
            (s.replicas, s.ready_replicas, s.observed_generation),
            (2, 2, Some(1))
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
    }

    #[test]
    fn nothing_fits_is_degraded_with_the_reason() {
        let mut o = observed(&[], 0);
        o.placement.wanted = 2;
        o.placement.shortfall = Some(Shortfall {
            wanted: 2,
            placed: 0,
            need: 1 << 30,
            best_other: None,
        });
        let s = desired(&deployment("chat"), &o, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&s, "Degraded"), ("True", "InsufficientCapacity"));
        assert_eq!(cond(&s, "Ready"), ("False", "NoNodes"));
    }

    #[test]
    fn a_missing_profile_and_a_failed_pipeline_are_named() {
        let mut o = observed(&["a"], 0);
        o.profile_found = false;
        let s = desired(&deployment("chat"), &o, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&s, "Degraded"), ("True", "ProfileNotFound"));
        let mut o = observed(&["a"], 0);
        o.failures = vec![Failure {
            node: "a".into(),
            version: "v1".into(),
            reason: Some("LoadFailed".into()),
            message: "sha256 mismatch".into(),
        }];
        let s = desired(&deployment("chat"), &o, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&s, "Degraded"), ("True", "PipelineFailed"));
        assert!(
            conditions::find(&s.conditions, "Degraded")
                .expect("c")
                .message
                .contains("sha256 mismatch")
        );
        assert_eq!(cond(&s, "Progressing"), ("True", "Loading"));
    }

    #[test]
    fn a_new_version_that_does_not_fit_next_to_the_old_one_says_the_rollout_waits() {
        let mut o = observed(&["a", "b"], 2);
        o.failures = vec![Failure {
            node: "b".into(),
            version: "v2".into(),
            reason: Some("InsufficientVram".into()),
            message: "refused: gpu0: needs 20.0Gi for weights, budget 21.6Gi of which 4.0Gi in use"
                .into(),
        }];
        let s = desired(&deployment("chat"), &o, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(cond(&s, "Degraded"), ("True", "InsufficientVram"));
        let message = conditions::find(&s.conditions, "Degraded")
            .expect("c")
            .message
            .clone();
        assert!(
            message.starts_with("node b cannot hold v2 next to v1: refused: gpu0: needs 20.0Gi"),
            "{message}"
        );
        assert!(message.contains("the rollout waits"), "{message}");
    }

    #[test]
    fn an_invalid_spec_keeps_the_placement_and_split_already_in_force() {
        let mut d = deployment("chat");
        let before = desired(&d, &observed(&["a"], 1), jiff::Timestamp::UNIX_EPOCH);
        d.status = Some(before.clone());
        d.metadata.generation = Some(2);
        let err = Error::InvalidSpec {
            field: "spec.model.source.path".into(),
            message: "must be absolute".into(),
        };
        let s = invalid(&d, &err, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(s.placement, before.placement);
        assert_eq!(s.traffic, before.traffic);
        assert_eq!(cond(&s, "Degraded"), ("True", "InvalidSpec"));
        assert!(
            conditions::find(&s.conditions, "Degraded")
                .expect("c")
                .message
                .contains("spec.model.source.path")
        );
        assert_eq!(
            cond(&s, "Ready"),
            ("True", "AllReplicasReady"),
            "what serves keeps serving"
        );
    }
}
