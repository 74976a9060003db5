//! Canary analysis: the canary's error rate and p95 latency over one interval,
//! from the request counts the agents report in their GpuNodes, judged against
//! `canary.analysis` and against the stable version over the same interval.
//!
//! The counts are cumulative (since each agent loaded the version). The state
//! kept in status holds their sums at the interval's start, so an interval's
//! figures are a difference, and an operator restart resumes the interval.

use std::time::Duration;

use jiff::Timestamp;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inference_deployment::AnalysisSpec;

/// Latency buckets an agent reports: bucket `i` counts requests that took at
/// most `2^i` ms; the last one counts the rest.
pub const LATENCY_BUCKETS: usize = 18;

/// Upper bound of latency bucket `i`, in milliseconds (the last bucket, which
/// has none, reports its lower bound doubled).
pub fn bucket_ms(i: usize) -> u32 {
    1u32 << i.min(31)
}

/// Requests a model version served, as counts that only grow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestTally {
    /// Requests answered.
    #[serde(default)]
    pub requests: i64,
    /// Requests that failed on the server's side (5xx).
    #[serde(default)]
    pub errors: i64,
    /// Requests per latency bucket: bucket `i` up to `2^i` ms, the last one
    /// above `2^16` ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 18))]
    pub latency_buckets: Vec<i64>,
}

impl RequestTally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &RequestTally) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
    }

    /// The counts since `earlier`, or `None` when one went back (an agent
    /// restarted or reloaded the version and its counts started over).
    pub fn since(&self, earlier: &RequestTally) -> Option<RequestTally> {
        let bucket = |v: &[i64], i: usize| v.get(i).copied().unwrap_or(0);
        let n = self
            .latency_buckets
            .len()
            .max(earlier.latency_buckets.len());
        let buckets = (0..n)
            .map(|i| bucket(&self.latency_buckets, i) - bucket(&earlier.latency_buckets, i))
            .collect::<Vec<_>>();
        let d = RequestTally {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            latency_buckets: buckets,
        };
        (d.requests >= 0 && d.errors >= 0 && d.latency_buckets.iter().all(|&b| b >= 0)).then_some(d)
    }

    /// The `q` quantile of latency, as the upper bound of its bucket, in ms.
    pub fn percentile_ms(&self, q: f64) -> Option<u32> {
        let total: i64 = self.latency_buckets.iter().sum();
        if total <= 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_ms(i));
            }
        }
        Some(bucket_ms(self.latency_buckets.len()))
    }

    /// Errors per hundred requests; `None` without requests.
    pub fn error_rate_percent(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 * 100.0 / self.requests as f64)
    }

    fn figures(&self) -> VersionFigures {
        VersionFigures {
            requests: self.requests,
            errors: self.errors,
            p95_ms: self.percentile_ms(0.95),
        }
    }
}

/// What the agents report now for a rollout's two versions, summed over the
/// placed nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// The nodes whose reports are summed, sorted.
    pub nodes: Vec<String>,
    /// The canary's counts.
    pub canary: RequestTally,
    /// The stable version's counts.
    pub stable: RequestTally,
}

/// The analysis state kept in status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the interval being measured began (RFC 3339).
    pub interval_start: String,
    /// The nodes whose counts are summed; if they change, the interval
    /// starts over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The canary's counts at the interval's start.
    #[serde(default)]
    pub canary_baseline: RequestTally,
    /// The stable version's counts at the interval's start.
    #[serde(default)]
    pub stable_baseline: RequestTally,
    /// Intervals passed since the step in force began.
    #[serde(default)]
    pub passed: i32,
    /// The last interval judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<AnalysisResult>,
}

/// The verdict on one interval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// `Passed`, `Failed` or `Inconclusive` (too few canary requests, or the
    /// counts started over).
    pub outcome: AnalysisOutcome,
    /// When the interval ended (RFC 3339).
    pub at: String,
    /// The verdict in words, with the figures and thresholds.
    pub message: String,
    /// The canary over the interval.
    pub canary: VersionFigures,
    /// The stable version over the interval.
    pub stable: VersionFigures,
}

/// One version's figures over an interval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VersionFigures {
    /// Requests answered.
    pub requests: i64,
    /// Of which failed (5xx).
    pub errors: i64,
    /// p95 latency in ms (upper bound of its bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u32>,
}

/// Outcome of one analysis interval.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnalysisOutcome {
    /// The canary met every threshold.
    Passed,
    /// The canary broke a threshold: the rollout rolls back.
    Failed,
    /// Not judged: too few canary requests, or the counts started over.
    #[default]
    Inconclusive,
}

impl AnalysisOutcome {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisOutcome::Passed => "Passed",
            AnalysisOutcome::Failed => "Failed",
            AnalysisOutcome::Inconclusive => "Inconclusive",
        }
    }
}

/// Where the analysis stands after a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysed {
    /// The state to keep in status.
    pub state: AnalysisStatus,
    /// Set when the interval that just ended failed: why.
    pub failed: Option<String>,
    /// Time left in the interval being measured.
    pub left: Duration,
}

fn start(
    counts: &Counts,
    now: Timestamp,
    passed: i32,
    last: Option<AnalysisResult>,
) -> AnalysisStatus {
    AnalysisStatus {
        interval_start: now.to_string(),
        nodes: counts.nodes.clone(),
        canary_baseline: counts.canary.clone(),
        stable_baseline: counts.stable.clone(),
        passed,
        last,
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// Measures and, once the interval is over, judges the canary. `previous` is
/// the state from the last look (none: the analysis starts now).
pub fn analyse(
    spec: &AnalysisSpec,
    previous: Option<&AnalysisStatus>,
    counts: &Counts,
    now: Timestamp,
) -> Analysed {
    let interval = Duration::from_secs(u64::from(spec.interval_seconds.max(1)));
    let Some((previous, began)) = previous.and_then(|p| {
        let began: Timestamp = p.interval_start.parse().ok()?;
        Some((p, began))
    }) else {
        return Analysed {
            state: start(counts, now, 0, None),
            failed: None,
            left: interval,
        };
    };
    let spent = elapsed(began, now);
    if spent < interval {
        return Analysed {
            state: previous.clone(),
            failed: None,
            left: interval - spent,
        };
    }
    let at = now.to_string();
    let deltas = (previous.nodes == counts.nodes)
        .then(|| {
            Some((
                counts.canary.since(&previous.canary_baseline)?,
                counts.stable.since(&previous.stable_baseline)?,
            ))
        })
        .flatten();
    let Some((canary, stable)) = deltas else {
        let last = AnalysisResult {
            outcome: AnalysisOutcome::Inconclusive,
            at,
            message: "the nodes reporting, or their counts, started over during the interval"
                .to_owned(),
            ..AnalysisResult::default()
        };
        return Analysed {
            state: start(counts, now, previous.passed, Some(last)),
            failed: None,
            left: interval,
        };
    };
    let verdict = judge(spec, &canary, &stable);
    let passed = previous.passed + i32::from(verdict.0 == AnalysisOutcome::Passed);
    let failed = (verdict.0 == AnalysisOutcome::Failed).then(|| verdict.1.clone());
    let last = AnalysisResult {
        outcome: verdict.0,
        at,
        message: verdict.1,
        canary: canary.figures(),
        stable: stable.figures(),
    };
    Analysed {
        state: start(counts, now, passed, Some(last)),
        failed,
        left: interval,
    }
}

fn rate(t: &RequestTally) -> String {
    format!("{:.1}%", t.error_rate_percent().unwrap_or(0.0))
}

fn p95(t: &RequestTally) -> String {
    t.percentile_ms(0.95)
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"))
}

/// The verdict on one interval's counts and its reason.
fn judge(
    spec: &AnalysisSpec,
    canary: &RequestTally,
    stable: &RequestTally,
) -> (AnalysisOutcome, String) {
    let min = i64::from(spec.min_requests);
    if canary.requests < min {
        return (
            AnalysisOutcome::Inconclusive,
            format!(
                "{} canary requests in the interval, fewer than minRequests {min}",
                canary.requests
            ),
        );
    }
    let figures = format!(
        "canary error rate {} over {} requests, p95 {}; stable {} over {}, p95 {}",
        rate(canary),
        canary.requests,
        p95(canary),
        rate(stable),
        stable.requests,
        p95(stable)
    );
    let error_rate = canary.error_rate_percent().unwrap_or(0.0);
    if error_rate > f64::from(spec.max_error_rate_percent) {
        return (
            AnalysisOutcome::Failed,
            format!(
                "error rate {} is above maxErrorRatePercent {}% ({figures})",
                rate(canary),
                spec.max_error_rate_percent
            ),
        );
    }
    let canary_p95 = canary.percentile_ms(0.95).unwrap_or(0);
    if let Some(max) = spec.max_p95_latency_ms
        && canary_p95 > max
    {
        return (
            AnalysisOutcome::Failed,
            format!("p95 latency {canary_p95} ms is above maxP95LatencyMs {max} ({figures})"),
        );
    }
    // Against stable: only when stable served enough to compare with.
    if let Some(pct) = spec.max_p95_increase_percent
        && stable.requests >= min
        && let Some(stable_p95) = stable.percentile_ms(0.95)
    {
        let allowed = u64::from(stable_p95) * (100 + u64::from(pct)) / 100;
        if u64::from(canary_p95) > allowed {
            return (
                AnalysisOutcome::Failed,
                format!(
                    "p95 latency {canary_p95} ms is more than maxP95IncreasePercent {pct}% above stable's {stable_p95} ms ({figures})"
                ),
            );
        }
    }
    (AnalysisOutcome::Passed, figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(requests: i64, errors: i64, ms: u32) -> RequestTally {
        let mut buckets = vec![0; LATENCY_BUCKETS];
        let i = (0..LATENCY_BUCKETS)
            .find(|&i| ms <= bucket_ms(i))
            .unwrap_or(LATENCY_BUCKETS - 1);
        buckets[i] = requests;
        RequestTally {
            requests,
            errors,
            latency_buckets: buckets,
        }
    }

    fn counts(canary: RequestTally, stable: RequestTally) -> Counts {
        Counts {
            nodes: vec!["n1".into(), "n2".into()],
            canary,
            stable,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn spec() -> AnalysisSpec {
        AnalysisSpec {
            max_error_rate_percent: 5,
            max_p95_latency_ms: Some(100),
            max_p95_increase_percent: None,
            min_requests: 20,
            interval_seconds: 30,
        }
    }

    #[test]
    fn an_interval_is_judged_on_the_counts_since_its_start() {
        let first = analyse(
            &spec(),
            None,
            &counts(tally(1000, 900, 8), tally(0, 0, 8)),
            at(0),
        );
        assert_eq!(first.left, Duration::from_secs(30));
        let mid = analyse(
            &spec(),
            Some(&first.state),
            &counts(tally(1010, 900, 8), tally(5, 0, 8)),
            at(10),
        );
        assert_eq!(
            (mid.state.clone(), mid.left),
            (first.state.clone(), Duration::from_secs(20))
        );
        // 100 new requests, 2 new errors: the 900 old errors do not count.
        let end = analyse(
            &spec(),
            Some(&mid.state),
            &counts(tally(1100, 902, 8), tally(50, 0, 8)),
            at(30),
        );
        assert_eq!(end.failed, None);
        let last = end.state.last.expect("judged");
        assert_eq!(last.outcome, AnalysisOutcome::Passed);
        assert_eq!((last.canary.requests, last.canary.errors), (100, 2));
        assert_eq!(end.state.passed, 1);
        assert_eq!(end.state.interval_start, at(30).to_string());
    }

    #[test]
    fn errors_above_the_threshold_fail_and_say_the_figures() {
        let first = analyse(
            &spec(),
            None,
            &counts(tally(0, 0, 8), tally(0, 0, 8)),
            at(0),
        );
        let end = analyse(
            &spec(),
            Some(&first.state),
            &counts(tally(40, 10, 8), tally(60, 0, 8)),
            at(31),
        );
        let why = end.failed.expect("failed");
        assert!(
            why.contains("error rate 25.0% is above maxErrorRatePercent 5%"),
            "{why}"
        );
        assert!(why.contains("stable 0.0% over 60"), "{why}");
    }

    #[test]
    fn latency_above_the_threshold_or_too_far_above_stable_fails() {
        let first = analyse(&spec(), None, &Counts::default(), at(0));
        let slow = analyse(
            &spec(),
            Some(&first.state),
            &Counts {
                nodes: vec![],
                ..counts(tally(30, 0, 200), tally(30, 0, 8))
            },
            at(30),
        );
        assert!(
            slow.failed
                .expect("slow")
                .contains("p95 latency 256 ms is above maxP95LatencyMs 100")
        );
        let relative = AnalysisSpec {
            max_p95_latency_ms: None,
            max_p95_increase_percent: Some(50),
            ..spec()
        };
        let vs_stable = analyse(
            &relative,
            Some(&first.state),
            &Counts {
                nodes: vec![],
                ..counts(tally(30, 0, 30), tally(30, 0, 8))
            },
            at(30),
        );
        assert!(
            vs_stable
                .failed
                .expect("slower than stable")
                .contains("above stable's 8 ms")
        );
        // Stable too quiet to compare with: not judged on it.
        let quiet = analyse(
            &relative,
            Some(&first.state),
            &Counts {
                nodes: vec![],
                ..counts(tally(30, 0, 30), tally(3, 0, 8))
            },
            at(30),
        );
        assert_eq!(quiet.failed, None);
    }

    #[test]
    fn too_few_requests_or_counts_that_start_over_are_inconclusive() {
        let first = analyse(
            &spec(),
            None,
            &counts(tally(100, 0, 8), tally(0, 0, 8)),
            at(0),
        );
        let few = analyse(
            &spec(),
            Some(&first.state),
            &counts(tally(110, 10, 8), tally(0, 0, 8)),
            at(30),
        );
        assert_eq!(
            few.failed, None,
            "10 requests, all failed, are not enough to judge"
        );
        assert_eq!(
            few.state.last.as_ref().map(|l| l.outcome),
            Some(AnalysisOutcome::Inconclusive)
        );
        assert_eq!(few.state.passed, 0);
        // An agent restarted: its counts went back.
        let restarted = analyse(
            &spec(),
            Some(&few.state),
            &counts(tally(50, 0, 8), tally(0, 0, 8)),
            at(60),
        );
        assert_eq!(
            restarted.state.last.as_ref().map(|l| l.outcome),
            Some(AnalysisOutcome::Inconclusive)
        );
        assert_eq!(
            restarted.state.canary_baseline.requests, 50,
            "the next interval starts from the new counts"
        );
        // A node joined: its whole history would count.
        let joined = Counts {
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            ..counts(tally(5000, 0, 8), tally(0, 0, 8))
        };
        let grown = analyse(&spec(), Some(&restarted.state), &joined, at(90));
        assert_eq!(
            grown.state.last.as_ref().map(|l| l.outcome),
            Some(AnalysisOutcome::Inconclusive)
        );
    }

    #[test]
    fn sums_and_differences_keep_every_bucket() {
        let mut a = tally(10, 1, 4);
        a.add(&tally(5, 0, 300));
        assert_eq!(a.requests, 15);
        assert_eq!(a.percentile_ms(0.5), Some(4));
        assert_eq!(a.percentile_ms(0.95), Some(512));
        assert_eq!(
            a.since(&tally(10, 1, 4)),
            Some(RequestTally {
                errors: 0,
                ..tally(5, 0, 300)
            })
        );
        assert_eq!(tally(1, 0, 4).since(&tally(2, 0, 4)), None);
    }
}
