//! The traffic split an InferenceDeployment spec asks for: which version is
//! stable, which is canary and with what weight, which is previewed.

use crate::inference_deployment::{
    InferenceDeploymentSpec, RolloutPhase, RolloutStatus, RolloutStrategy, TrafficSplit,
};

/// The traffic split a spec asks for and the rollout phase it means: the
/// operator's effective split (before steps and analysis), and what a
/// standalone agent routes.
pub fn spec_traffic(spec: &InferenceDeploymentSpec) -> (TrafficSplit, RolloutStatus) {
    let stable = spec.model.version.clone();
    let strategy = spec.rollout.as_ref().map(|r| r.strategy);
    match strategy {
        Some(RolloutStrategy::Canary) => match spec.canary_model() {
            Some(canary) => {
                let weight = spec
                    .rollout
                    .as_ref()
                    .and_then(|r| r.canary.as_ref())
                    .map_or(0, |c| c.weight.clamp(0, 100));
                let split = TrafficSplit {
                    stable_version: stable,
                    canary_version: Some(canary.version.clone()),
                    canary_weight: weight,
                    preview_version: None,
                };
                let message = format!("{weight}% of unversioned requests go to {}", canary.version);
                (
                    split,
                    RolloutStatus {
                        phase: RolloutPhase::Canary,
                        step: None,
                        message: Some(message),
                    },
                )
            }
            None => stable_only(stable),
        },
        Some(RolloutStrategy::BlueGreen) => match (
            spec.preview_model(),
            spec.rollout.as_ref().and_then(|r| r.blue_green.as_ref()),
        ) {
            (Some(preview), Some(bg)) if bg.promote => {
                let split = TrafficSplit {
                    stable_version: preview.version.clone(),
                    canary_version: None,
                    canary_weight: 0,
                    preview_version: None,
                };
                let message = format!(
                    "{} promoted: all traffic goes to it; {stable} stays loaded for {}s",
                    preview.version, bg.scale_down_delay_seconds
                );
                (
                    split,
                    RolloutStatus {
                        phase: RolloutPhase::Promoted,
                        step: None,
                        message: Some(message),
                    },
                )
            }
            (Some(preview), _) => {
                let split = TrafficSplit {
                    stable_version: stable.clone(),
                    canary_version: None,
                    canary_weight: 0,
                    preview_version: Some(preview.version.clone()),
                };
                let message = format!(
                    "{} previewed next to {stable}; set rollout.blueGreen.promote to switch",
                    preview.version
                );
                (
                    split,
                    RolloutStatus {
                        phase: RolloutPhase::Preview,
                        step: None,
                        message: Some(message),
                    },
                )
            }
            _ => stable_only(stable),
        },
        None => stable_only(stable),
    }
}

fn stable_only(stable: String) -> (TrafficSplit, RolloutStatus) {
    (
        TrafficSplit {
            stable_version: stable,
            canary_version: None,
            canary_weight: 0,
            preview_version: None,
        },
        RolloutStatus {
            phase: RolloutPhase::Stable,
            step: None,
            message: None,
        },
    )
}
