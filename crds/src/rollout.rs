//! The traffic split an InferenceDeployment asks for: which version is stable,
//! which is canary and with what weight, which is previewed, which is kept
//! loaded for a rollback.
//!
//! Two entry points: [`spec_traffic`], the split the spec alone gives (what a
//! standalone agent routes: `canary.weight`, `blueGreen.promote`), and
//! [`effective`], the operator's, which also runs the time-driven parts
//! (canary steps, blue-green auto-promotion and scale-down delay) from the
//! state it keeps in status, so that a restart resumes where it was.

use std::time::Duration;

use jiff::Timestamp;

use crate::analysis::{Counts, analyse};
use crate::inference_deployment::{
    InferenceDeploymentSpec, RolloutPhase, RolloutStatus, RolloutStrategy, TrafficSplit,
};

/// The split the spec alone asks for and the rollout phase it means, with no
/// clock: steps are not run (the spec's `canary.weight` holds) and a promoted
/// blue-green switch keeps nothing loaded.
pub fn spec_traffic(spec: &InferenceDeploymentSpec) -> (TrafficSplit, RolloutStatus) {
    let e = effective(
        &InferenceDeploymentSpec {
            rollout: spec.rollout.clone().map(|mut r| {
                if let Some(c) = r.canary.as_mut() {
                    c.steps.clear();
                }
                if let Some(bg) = r.blue_green.as_mut() {
                    bg.auto_promote_after_seconds = None;
                    bg.scale_down_delay_seconds = 0;
                }
                r
            }),
            ..spec.clone()
        },
        &Observed {
            now: Timestamp::UNIX_EPOCH,
            previous: None,
            ready: false,
            counts: None,
        },
    );
    (e.traffic, e.rollout)
}

/// What the rollout's progress depends on besides the spec.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The time now.
    pub now: Timestamp,
    /// The rollout state written last time (status).
    pub previous: Option<&'a RolloutStatus>,
    /// Whether the canary (or preview) version is ready on every placed node:
    /// steps and auto-promotion wait for it.
    pub ready: bool,
    /// What the agents report for the canary and stable versions, for
    /// `canary.analysis` (none: the analysis does not run).
    pub counts: Option<&'a Counts>,
}

/// The operator's split and rollout state, and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// What agents route.
    pub traffic: TrafficSplit,
    /// The phase and the state kept in status.
    pub rollout: RolloutStatus,
    /// How long until the state changes by itself (a step ends, a preview is
    /// promoted, a retained version is unloaded).
    pub next: Option<Duration>,
}

fn split(stable: &str) -> TrafficSplit {
    TrafficSplit {
        stable_version: stable.to_owned(),
        ..TrafficSplit::default()
    }
}

/// `weight`% of unversioned requests to the canary `version`, the rest to `stable`.
fn canary_split(stable: &str, version: &str, weight: i32) -> TrafficSplit {
    TrafficSplit {
        canary_version: Some(version.to_owned()),
        canary_weight: weight,
        ..split(stable)
    }
}

fn state(phase: RolloutPhase, message: String) -> RolloutStatus {
    RolloutStatus {
        phase,
        message: Some(message),
        ..RolloutStatus::default()
    }
}

/// The start time kept in `previous` when it belongs to `version` and `phase`.
fn kept_since(
    previous: Option<&RolloutStatus>,
    version: &str,
    phase: RolloutPhase,
) -> Option<Timestamp> {
    previous
        .filter(|p| p.version.as_deref() == Some(version) && p.phase == phase)
        .and_then(|p| p.since.as_deref())
        .and_then(|s| s.parse().ok())
}

/// `t` to the second, for messages.
fn round(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// The operator's split: [`spec_traffic`]'s, with the canary steps and the
/// blue-green timers run from the state in `observed.previous`.
pub fn effective(spec: &InferenceDeploymentSpec, observed: &Observed<'_>) -> Effective {
    let stable = spec.model.version.clone();
    let rollout = spec.rollout.as_ref();
    let stable_only = || Effective {
        traffic: split(&stable),
        rollout: RolloutStatus::default(),
        next: None,
    };
    match rollout.map(|r| r.strategy) {
        Some(RolloutStrategy::Canary) => {
            let (Some(canary), Some(settings)) =
                (spec.canary_model(), rollout.and_then(|r| r.canary.as_ref()))
            else {
                return stable_only();
            };
            canary_rollout(&stable, &canary.version, settings, observed)
        }
        Some(RolloutStrategy::BlueGreen) => {
            let (Some(preview), Some(bg)) = (
                spec.preview_model(),
                rollout.and_then(|r| r.blue_green.as_ref()),
            ) else {
                return stable_only();
            };
            blue_green(&stable, &preview.version, bg, observed)
        }
        None => stable_only(),
    }
}

/// A canary by weight or by steps, judged by `canary.analysis` when it is set:
/// a failed interval rolls back at once, and a step ends only once an
/// interval has passed during it.
fn canary_rollout(
    stable: &str,
    version: &str,
    settings: &crate::inference_deployment::CanarySpec,
    observed: &Observed<'_>,
) -> Effective {
    let previous = observed
        .previous
        .filter(|p| p.version.as_deref() == Some(version));
    // A rolled-back version stays rolled back until the spec names another
    // (or the state is cleared: `kubectl gogrid retry`).
    if let Some(p) = previous.filter(|p| p.phase == RolloutPhase::RolledBack) {
        return Effective {
            traffic: split(stable),
            rollout: p.clone(),
            next: None,
        };
    }
    let analysed = match (settings.analysis.as_ref(), observed.counts) {
        (Some(spec), Some(counts)) => Some(analyse(
            spec,
            previous
                .filter(|p| p.phase == RolloutPhase::Canary)
                .and_then(|p| p.analysis.as_ref()),
            counts,
            observed.now,
        )),
        _ => None,
    };
    if let Some(a) = &analysed
        && let Some(why) = &a.failed
    {
        return Effective {
            traffic: split(stable),
            rollout: RolloutStatus {
                version: Some(version.to_owned()),
                since: Some(observed.now.to_string()),
                analysis: Some(a.state.clone()),
                step: previous.and_then(|p| p.step),
                ..state(
                    RolloutPhase::RolledBack,
                    format!("rolled back to {stable}: {version} failed analysis: {why}"),
                )
            },
            next: None,
        };
    }
    let mut e = if settings.steps.is_empty() {
        let weight = settings.weight.clamp(0, 100);
        Effective {
            traffic: canary_split(stable, version, weight),
            rollout: RolloutStatus {
                version: Some(version.to_owned()),
                ..state(
                    RolloutPhase::Canary,
                    format!("{weight}% of unversioned requests go to {version}"),
                )
            },
            next: None,
        }
    } else {
        let passed = analysed.as_ref().map(|a| a.state.passed);
        canary_steps(stable, version, &settings.steps, passed, observed)
    };
    if let Some(mut a) = analysed
        && e.rollout.phase == RolloutPhase::Canary
    {
        // Intervals passed count for the step they passed in.
        if previous.and_then(|p| p.step) != e.rollout.step {
            a.state.passed = 0;
        }
        e.rollout.analysis = Some(a.state);
        e.next = Some(e.next.map_or(a.left, |n| n.min(a.left)));
    }
    e
}

/// `passed`: the analysis intervals passed during the step in force (none:
/// no analysis).
fn canary_steps(
    stable: &str,
    version: &str,
    steps: &[crate::inference_deployment::CanaryStep],
    passed: Option<i32>,
    observed: &Observed<'_>,
) -> Effective {
    let now = observed.now;
    let n = steps.len();
    let previous = observed
        .previous
        .filter(|p| p.version.as_deref() == Some(version));
    let done = |message: String| Effective {
        traffic: split(version),
        rollout: RolloutStatus {
            step: Some(n as i32),
            version: Some(version.to_owned()),
            ..state(RolloutPhase::Promoted, message)
        },
        next: None,
    };
    if previous.is_some_and(|p| p.phase == RolloutPhase::Promoted) {
        return done(format!(
            "all {n} steps done: {version} takes all traffic; set spec.model to it to finish"
        ));
    }
    let kept = previous.and_then(|p| {
        let since: Timestamp = p.since.as_deref()?.parse().ok()?;
        Some((usize::try_from(p.step?).ok()?, since))
    });
    let (mut step, mut since) = kept.unwrap_or((0, now));
    step = step.min(n - 1);
    let pause = |i: usize| Duration::from_secs(u64::from(steps[i].pause_seconds));
    // One step per look: each step holds its weight for its whole pause, and
    // only while the canary serves on every node and passes its analysis.
    let paused = elapsed(since, now) >= pause(step);
    let judged = passed.is_none_or(|p| p >= 1);
    if observed.ready && paused && judged {
        if step + 1 == n {
            return done(format!(
                "all {n} steps done: {version} takes all traffic; set spec.model to it to finish"
            ));
        }
        step += 1;
        since = now;
    }
    let weight = steps[step].weight.clamp(0, 100);
    let left = pause(step).saturating_sub(elapsed(since, now));
    // Messages name absolute times, not countdowns: a status that changes
    // with every look would be written with every look.
    let message = if observed.ready && paused {
        format!(
            "step {}/{n}: {weight}% of unversioned requests go to {version}; waiting for an analysis interval to pass",
            step + 1
        )
    } else if observed.ready {
        format!(
            "step {}/{n}: {weight}% of unversioned requests go to {version} until {}",
            step + 1,
            round(since + pause(step))
        )
    } else {
        format!(
            "step {}/{n}: {weight}% of unversioned requests go to {version}; waiting for it to be ready on every node",
            step + 1
        )
    };
    Effective {
        traffic: canary_split(stable, version, weight),
        rollout: RolloutStatus {
            step: Some(step as i32),
            version: Some(version.to_owned()),
            since: Some(since.to_string()),
            ..state(RolloutPhase::Canary, message)
        },
        // Past the pause, the analysis says when to look again.
        next: (!paused || judged).then(|| left.max(Duration::from_secs(1))),
    }
}

fn blue_green(
    active: &str,
    version: &str,
    bg: &crate::inference_deployment::BlueGreenSpec,
    observed: &Observed<'_>,
) -> Effective {
    let now = observed.now;
    let promoted_at = kept_since(observed.previous, version, RolloutPhase::Promoted);
    let ready_at = kept_since(observed.previous, version, RolloutPhase::Preview)
        .or(observed.ready.then_some(now));
    let auto = bg
        .auto_promote_after_seconds
        .map(|s| Duration::from_secs(u64::from(s)));
    let auto_due = match (auto, ready_at) {
        (Some(after), Some(at)) => elapsed(at, now) >= after,
        _ => false,
    };
    if bg.promote || auto_due || (promoted_at.is_some() && auto.is_some()) {
        let at = promoted_at.unwrap_or(now);
        let delay = Duration::from_secs(u64::from(bg.scale_down_delay_seconds));
        let left = delay.saturating_sub(elapsed(at, now));
        let how = if bg.promote {
            "promoted"
        } else {
            "promoted automatically"
        };
        let (retained, message, next) = if left > Duration::ZERO {
            (
                Some(active.to_owned()),
                format!(
                    "{version} {how}: all traffic goes to it; {active} stays loaded until {} for an instant rollback",
                    round(at + delay)
                ),
                Some(left),
            )
        } else {
            (
                None,
                format!("{version} {how}: all traffic goes to it; {active} is unloaded"),
                None,
            )
        };
        return Effective {
            traffic: TrafficSplit {
                retained_version: retained,
                ..split(version)
            },
            rollout: RolloutStatus {
                version: Some(version.to_owned()),
                since: Some(at.to_string()),
                ..state(RolloutPhase::Promoted, message)
            },
            next,
        };
    }
    let (message, next) = match (auto, ready_at) {
        (Some(after), Some(at)) => {
            let left = after.saturating_sub(elapsed(at, now));
            (
                format!(
                    "{version} previewed next to {active}; promoted automatically at {}",
                    round(at + after)
                ),
                Some(left.max(Duration::from_secs(1))),
            )
        }
        (Some(_), None) => (
            format!(
                "{version} previewed next to {active}; waiting for it to be ready on every node"
            ),
            None,
        ),
        (None, _) => (
            format!(
                "{version} previewed next to {active}; set rollout.blueGreen.promote to switch"
            ),
            None,
        ),
    };
    Effective {
        traffic: TrafficSplit {
            preview_version: Some(version.to_owned()),
            ..split(active)
        },
        rollout: RolloutStatus {
            version: Some(version.to_owned()),
            since: ready_at.map(|t| t.to_string()),
            ..state(RolloutPhase::Preview, message)
        },
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(rollout: serde_json::Value) -> InferenceDeploymentSpec {
        let model = |v: &str| json!({"name": "m", "version": v, "format": "gguf", "task": "text-generation", "source": {"path": "/m"}});
        let mut rollout = rollout;
        if let Some(c) = rollout.get_mut("canary") {
            c["model"] = model("v2");
        }
        if let Some(bg) = rollout.get_mut("blueGreen") {
            bg["preview"] = json!({"model": model("v2")});
        }
        serde_json::from_value(json!({"profile": "p", "model": model("v1"), "rollout": rollout}))
            .expect("spec")
    }

    fn at(s: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s as i64).expect("time")
    }

    /// Runs `effective` as the operator does: each result's state is the next look's previous.
    fn look(
        spec: &InferenceDeploymentSpec,
        previous: Option<&RolloutStatus>,
        now: u64,
        ready: bool,
    ) -> Effective {
        effective(
            spec,
            &Observed {
                now: at(now),
                previous,
                ready,
                counts: None,
            },
        )
    }

    #[test]
    fn canary_steps_hold_each_weight_for_its_pause_then_promote() {
        let s = spec(json!({"strategy": "Canary", "canary": {"steps": [
            {"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 30}]}}));
        let e = look(&s, None, 0, true);
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (10, Some(0)));
        assert_eq!(e.next, Some(Duration::from_secs(60)));
        let e = look(&s, Some(&e.rollout), 59, true);
        assert_eq!(e.traffic.canary_weight, 10, "the pause is not over");
        // Nothing in the state moves while a step holds: no status write per look.
        assert_eq!(look(&s, Some(&e.rollout), 30, true).rollout, e.rollout);
        let e = look(&s, Some(&e.rollout), 60, true);
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (50, Some(1)));
        assert_eq!(e.next, Some(Duration::from_secs(30)));
        let e = look(&s, Some(&e.rollout), 90, true);
        assert_eq!(e.rollout.phase, RolloutPhase::Promoted);
        assert_eq!(e.traffic, split("v2"));
        // Promoted stays promoted.
        let e = look(&s, Some(&e.rollout), 10_000, false);
        assert_eq!(e.rollout.phase, RolloutPhase::Promoted);
    }

    #[test]
    fn a_canary_that_is_not_ready_everywhere_holds_its_step() {
        let s = spec(json!({"strategy": "Canary", "canary": {"steps": [
            {"weight": 10, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}]}}));
        let e = look(&s, None, 0, false);
        let e = look(&s, Some(&e.rollout), 100, false);
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (10, Some(0)));
        assert!(
            e.rollout
                .message
                .unwrap_or_default()
                .contains("waiting for it to be ready")
        );
    }

    #[test]
    fn the_state_in_status_resumes_the_same_step_after_a_restart() {
        let s = spec(json!({"strategy": "Canary", "canary": {"steps": [
            {"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 600}]}}));
        let first = look(&s, None, 0, true);
        let second = look(&s, Some(&first.rollout), 60, true);
        // The status round-trips through the API server as JSON.
        let stored: RolloutStatus =
            serde_json::from_value(serde_json::to_value(&second.rollout).expect("json"))
                .expect("status");
        let resumed = look(&s, Some(&stored), 120, true);
        assert_eq!(
            (resumed.traffic.canary_weight, resumed.rollout.step),
            (50, Some(1))
        );
        assert_eq!(resumed.next, Some(Duration::from_secs(540)));
    }

    #[test]
    fn a_new_canary_version_starts_the_steps_over() {
        let s = spec(json!({"strategy": "Canary", "canary": {"steps": [
            {"weight": 10, "pauseSeconds": 1}, {"weight": 50, "pauseSeconds": 1}]}}));
        let old = RolloutStatus {
            step: Some(1),
            version: Some("v0".into()),
            since: Some(at(0).to_string()),
            ..RolloutStatus::default()
        };
        let e = look(&s, Some(&old), 5, true);
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (10, Some(0)));
    }

    fn with_counts(
        spec: &InferenceDeploymentSpec,
        previous: Option<&RolloutStatus>,
        now: u64,
        canary: (i64, i64),
    ) -> Effective {
        let tally = |(requests, errors): (i64, i64)| crate::analysis::RequestTally {
            requests,
            errors,
            latency_buckets: vec![requests],
        };
        let counts = Counts {
            nodes: vec!["n1".into()],
            canary: tally(canary),
            stable: tally((1000, 0)),
        };
        effective(
            spec,
            &Observed {
                now: at(now),
                previous,
                ready: true,
                counts: Some(&counts),
            },
        )
    }

    fn analysed_steps() -> InferenceDeploymentSpec {
        spec(json!({"strategy": "Canary", "canary": {
            "steps": [{"weight": 10, "pauseSeconds": 10}, {"weight": 50, "pauseSeconds": 10}],
            "analysis": {"intervalSeconds": 30, "minRequests": 20, "maxErrorRatePercent": 5}}}))
    }

    #[test]
    fn a_step_ends_only_once_an_analysis_interval_has_passed_in_it() {
        let s = analysed_steps();
        let e = with_counts(&s, None, 0, (0, 0));
        assert_eq!(e.next, Some(Duration::from_secs(10)));
        // The pause is over but no interval is: the step holds.
        let e = with_counts(&s, Some(&e.rollout), 10, (10, 0));
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (10, Some(0)));
        assert!(
            e.rollout
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("waiting for an analysis interval")
        );
        assert_eq!(
            e.next,
            Some(Duration::from_secs(20)),
            "looks again when the interval ends"
        );
        // The interval passes (100 requests, 1 error): the next step.
        let e = with_counts(&s, Some(&e.rollout), 30, (100, 1));
        assert_eq!((e.traffic.canary_weight, e.rollout.step), (50, Some(1)));
        let a = e.rollout.analysis.clone().expect("analysis in status");
        assert_eq!(a.passed, 0, "the interval was spent on step 1");
        assert_eq!(
            a.last.map(|l| l.outcome),
            Some(crate::analysis::AnalysisOutcome::Passed)
        );
        // Step 2 needs its own interval.
        let e = with_counts(&s, Some(&e.rollout), 60, (300, 1));
        assert_eq!(e.rollout.phase, RolloutPhase::Promoted);
        assert_eq!(e.traffic, split("v2"));
    }

    #[test]
    fn a_failed_interval_rolls_back_at_once_and_stays_rolled_back() {
        let s = analysed_steps();
        let e = with_counts(&s, None, 0, (0, 0));
        let e = with_counts(&s, Some(&e.rollout), 30, (100, 30));
        assert_eq!(e.rollout.phase, RolloutPhase::RolledBack);
        assert_eq!(e.traffic, split("v1"), "nothing goes to the canary");
        let why = e.rollout.message.clone().unwrap_or_default();
        assert!(
            why.contains("rolled back to v1: v2 failed analysis: error rate 30.0%"),
            "{why}"
        );
        // The status round-trips; the canary does not come back by itself.
        let stored: RolloutStatus =
            serde_json::from_value(serde_json::to_value(&e.rollout).expect("json"))
                .expect("status");
        let later = with_counts(&s, Some(&stored), 500, (100, 30));
        assert_eq!((later.traffic, later.rollout), (split("v1"), stored));
    }

    #[test]
    fn an_operator_restart_resumes_the_interval_from_status() {
        let s = analysed_steps();
        let e = with_counts(&s, None, 0, (0, 0));
        let stored: RolloutStatus =
            serde_json::from_value(serde_json::to_value(&e.rollout).expect("json"))
                .expect("status");
        // 30 s after the first look, with the counts since it: judged, not restarted.
        let e = with_counts(&s, Some(&stored), 30, (100, 0));
        assert_eq!(e.rollout.step, Some(1));
    }

    #[test]
    fn a_manual_canary_with_analysis_rolls_back_too() {
        let s = spec(json!({"strategy": "Canary", "canary": {"weight": 40,
            "analysis": {"intervalSeconds": 10, "minRequests": 10, "maxErrorRatePercent": 1}}}));
        let e = with_counts(&s, None, 0, (0, 0));
        assert_eq!(e.traffic.canary_weight, 40);
        assert_eq!(e.next, Some(Duration::from_secs(10)));
        let e = with_counts(&s, Some(&e.rollout), 10, (50, 0));
        assert_eq!(
            (e.traffic.canary_weight, e.rollout.phase),
            (40, RolloutPhase::Canary)
        );
        let e = with_counts(&s, Some(&e.rollout), 20, (100, 5));
        assert_eq!(
            (e.traffic.canary_weight, e.rollout.phase),
            (0, RolloutPhase::RolledBack)
        );
    }

    #[test]
    fn without_steps_the_spec_weight_is_the_split() {
        let s = spec(json!({"strategy": "Canary", "canary": {"weight": 25}}));
        let e = look(&s, None, 0, false);
        assert_eq!(e.traffic.canary_weight, 25);
        assert_eq!(spec_traffic(&s).0, e.traffic);
    }

    #[test]
    fn blue_green_promotes_by_itself_after_the_delay_and_keeps_the_old_version_loaded() {
        let s = spec(json!({"strategy": "BlueGreen", "blueGreen": {
            "autoPromoteAfterSeconds": 30, "scaleDownDelaySeconds": 20}}));
        let e = look(&s, None, 0, false);
        assert_eq!(e.traffic.preview_version.as_deref(), Some("v2"));
        assert_eq!(e.next, None, "the clock starts once the preview is ready");
        let e = look(&s, Some(&e.rollout), 10, true);
        assert_eq!(e.next, Some(Duration::from_secs(30)));
        let e = look(&s, Some(&e.rollout), 39, true);
        assert_eq!(e.rollout.phase, RolloutPhase::Preview);
        let e = look(&s, Some(&e.rollout), 40, true);
        assert_eq!(e.rollout.phase, RolloutPhase::Promoted);
        assert_eq!(e.traffic.stable_version, "v2");
        assert_eq!(e.traffic.retained_version.as_deref(), Some("v1"));
        assert_eq!(e.next, Some(Duration::from_secs(20)));
        let e = look(&s, Some(&e.rollout), 60, true);
        assert_eq!(e.traffic, split("v2"), "v1 is unloaded after the delay");
    }

    #[test]
    fn a_manual_blue_green_switch_and_its_rollback() {
        let mut s = spec(
            json!({"strategy": "BlueGreen", "blueGreen": {"promote": true, "scaleDownDelaySeconds": 30}}),
        );
        let e = look(&s, None, 0, true);
        assert_eq!(e.traffic.stable_version, "v2");
        assert_eq!(e.traffic.retained_version.as_deref(), Some("v1"));
        // Rolling back within the delay: v1 is still loaded, the switch is instant.
        if let Some(bg) = s.rollout.as_mut().and_then(|r| r.blue_green.as_mut()) {
            bg.promote = false;
        }
        let back = look(&s, Some(&e.rollout), 10, true);
        assert_eq!(back.traffic.stable_version, "v1");
        assert_eq!(back.traffic.preview_version.as_deref(), Some("v2"));
    }
}
