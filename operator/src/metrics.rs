//! The operator's Prometheus metrics: reconciles, errors, durations and writes
//! per controller, whether this replica leads, and each InferenceDeployment's
//! rollout: phase, canary weight in force and analysis verdicts.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `node`, `resourceprofile` or `inferencedeployment`.
    pub controller: &'static str,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: &'static str,
    /// [`crate::Error::metric_label`].
    pub error: &'static str,
}

/// Labels of a write to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The controller.
    pub controller: &'static str,
    /// Kind written, e.g. `DaemonSet`.
    pub kind: &'static str,
}

/// Labels naming an InferenceDeployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Labels of a rollout phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `Stable`, `Canary`, `Preview`, `Promoted` or `RolledBack`.
    pub phase: &'static str,
}

/// Labels of an analysis verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `Passed`, `Failed` or `Inconclusive`.
    pub outcome: &'static str,
}

const PHASES: [gogrid_crds::inference_deployment::RolloutPhase; 5] = {
    use gogrid_crds::inference_deployment::RolloutPhase::*;
    [Stable, Canary, Preview, Promoted, RolledBack]
};

/// All operator metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    writes: Family<WriteLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    phase: Family<PhaseLabels, Gauge<i64, AtomicI64>>,
    canary_weight: Family<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    analysis: Family<OutcomeLabels, Counter>,
    /// Deployments with series, to drop those of deleted ones.
    known: std::sync::Mutex<std::collections::BTreeSet<DeploymentLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gogrid_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "reconciles",
            "Reconciles run, per controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took, per controller",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes sent to the API server, per controller and kind",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let phase = Family::<PhaseLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "rollout_phase",
            "1 for each InferenceDeployment's rollout phase, 0 for the others",
            phase.clone(),
        );
        let canary_weight =
            Family::<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "canary_weight_ratio",
            "Share of unversioned requests the operator tells agents to send to the canary (0-1)",
            canary_weight.clone(),
        );
        let analysis = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "analysis_runs",
            "Canary analysis intervals judged, by outcome (Passed, Failed, Inconclusive)",
            analysis.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            leader,
            phase,
            canary_weight,
            analysis,
            known: std::sync::Mutex::default(),
        }
    }
}

impl Metrics {
    /// Start timing a reconcile; the returned guard records it when dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Count a failed reconcile.
    pub fn error(&self, controller: &'static str, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                error: error.metric_label(),
            })
            .inc();
    }

    /// Count a write.
    pub fn write(&self, controller: &'static str, kind: &'static str) {
        self.writes
            .get_or_create(&WriteLabels { controller, kind })
            .inc();
    }

    /// Writes sent so far by one controller for one kind.
    pub fn writes(&self, controller: &'static str, kind: &'static str) -> u64 {
        self.writes
            .get_or_create(&WriteLabels { controller, kind })
            .get()
    }

    /// Records a deployment's rollout after a status write: its phase, the
    /// canary weight in force and, when `after` holds a new verdict, it.
    pub fn observe_rollout(
        &self,
        namespace: &str,
        name: &str,
        before: Option<&gogrid_crds::inference_deployment::RolloutStatus>,
        after: &gogrid_crds::InferenceDeploymentStatus,
    ) {
        let rollout = after.rollout.clone().unwrap_or_default();
        for p in PHASES {
            self.phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    phase: p.as_str(),
                })
                .set(i64::from(p == rollout.phase));
        }
        let weight = after.traffic.as_ref().map_or(0, |t| t.canary_weight);
        let key = DeploymentLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.canary_weight
            .get_or_create(&key)
            .set(f64::from(weight.clamp(0, 100)) / 100.0);
        let last = |r: Option<&gogrid_crds::inference_deployment::RolloutStatus>| {
            r.and_then(|r| r.analysis.as_ref())
                .and_then(|a| a.last.clone())
        };
        if let Some(verdict) = last(Some(&rollout))
            && Some(&verdict.at) != last(before).as_ref().map(|l| &l.at)
        {
            self.analysis
                .get_or_create(&OutcomeLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    outcome: verdict.outcome.as_str(),
                })
                .inc();
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(key);
        }
    }

    /// Drops the rollout series of deployments not in `existing`.
    pub fn forget_deployments_except(
        &self,
        existing: &std::collections::BTreeSet<DeploymentLabels>,
    ) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let gone: Vec<DeploymentLabels> = known
            .iter()
            .filter(|k| !existing.contains(k))
            .cloned()
            .collect();
        for k in gone {
            for p in PHASES {
                self.phase.remove(&PhaseLabels {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    phase: p.as_str(),
                });
            }
            for outcome in ["Passed", "Failed", "Inconclusive"] {
                self.analysis.remove(&OutcomeLabels {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    outcome,
                });
            }
            self.canary_weight.remove(&k);
            known.remove(&k);
        }
    }

    /// Record leadership.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records a reconcile's duration on drop.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::InferenceDeploymentStatus;
    use gogrid_crds::analysis::{AnalysisOutcome, AnalysisResult, AnalysisStatus};
    use gogrid_crds::inference_deployment::{RolloutPhase, RolloutStatus, TrafficSplit};

    fn status(
        phase: RolloutPhase,
        weight: i32,
        verdict_at: Option<&str>,
    ) -> InferenceDeploymentStatus {
        InferenceDeploymentStatus {
            traffic: Some(TrafficSplit {
                stable_version: "v1".into(),
                canary_version: Some("v2".into()),
                canary_weight: weight,
                ..TrafficSplit::default()
            }),
            rollout: Some(RolloutStatus {
                phase,
                analysis: verdict_at.map(|at| AnalysisStatus {
                    last: Some(AnalysisResult {
                        outcome: AnalysisOutcome::Passed,
                        at: at.into(),
                        ..AnalysisResult::default()
                    }),
                    ..AnalysisStatus::default()
                }),
                ..RolloutStatus::default()
            }),
            ..InferenceDeploymentStatus::default()
        }
    }

    fn line(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    }

    #[test]
    fn the_rollout_series_follow_status_and_count_each_verdict_once() {
        let m = Metrics::default();
        let first = status(RolloutPhase::Canary, 25, Some("t1"));
        m.observe_rollout("ml", "chat", None, &first);
        // The same verdict seen again (a status write for something else) is not counted again.
        m.observe_rollout("ml", "chat", first.rollout.as_ref(), &first);
        let text = m.encode();
        assert_eq!(
            line(
                &text,
                r#"gogrid_operator_rollout_phase{namespace="ml",name="chat",phase="Canary"}"#
            )
            .as_deref(),
            Some(r#"gogrid_operator_rollout_phase{namespace="ml",name="chat",phase="Canary"} 1"#)
        );
        assert!(
            line(
                &text,
                r#"gogrid_operator_rollout_phase{namespace="ml",name="chat",phase="Stable"} 0"#
            )
            .is_some()
        );
        assert!(
            line(
                &text,
                r#"gogrid_operator_canary_weight_ratio{namespace="ml",name="chat"} 0.25"#
            )
            .is_some()
        );
        assert!(line(&text, r#"gogrid_operator_analysis_runs_total{namespace="ml",name="chat",outcome="Passed"} 1"#).is_some(), "{text}");
        m.forget_deployments_except(&std::collections::BTreeSet::new());
        assert!(
            !m.encode().contains(r#"name="chat""#),
            "a deleted deployment's series go"
        );
    }
}
