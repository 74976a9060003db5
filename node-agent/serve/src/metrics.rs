//! Prometheus metrics of the serving layer, labelled by model and version only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `model` label of requests for names the registry does not know: request
/// paths never become label values, so label cardinality stays bounded.
pub const UNKNOWN: &str = "unknown";

/// The API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Open Inference Protocol over REST.
    Rest,
    /// Open Inference Protocol over gRPC.
    Grpc,
    /// OpenAI-style REST.
    Openai,
}

impl Protocol {
    /// The label value: `rest`, `grpc` or `openai`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Grpc => "grpc",
            Self::Openai => "openai",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    version: String,
    protocol: &'static str,
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    model: String,
    version: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

/// Latency buckets: 1 ms .. ~65 s, doubling.
/// Bounded latency buckets (1 ms .. 65.5 s); the tallies keep one more.
pub const LATENCY_BUCKETS: usize = 17;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, LATENCY_BUCKETS as u16))
}

/// Upper bound of latency bucket `i`, in milliseconds.
fn bucket_ms(i: usize) -> u32 {
    1u32 << i.min(31)
}

/// What one model version has served since it was loaded: the agent reports
/// it in its GpuNode, a rollout's analysis reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed on the server's side (5xx): not a client's bad
    /// input (4xx), not throttling (429).
    pub errors: u64,
    /// Latency percentiles in ms, as the upper bound of their bucket (1, 2, 4
    /// ... ms); `None` before the first request.
    pub p50_ms: Option<u32>,
    /// 95th percentile.
    pub p95_ms: Option<u32>,
    /// 99th percentile.
    pub p99_ms: Option<u32>,
    /// Requests per latency bucket: bucket `i` up to `2^i` ms, the last one
    /// above every bound.
    pub buckets: [u64; LATENCY_BUCKETS + 1],
}

#[derive(Debug, Clone, Default)]
struct Tally {
    requests: u64,
    errors: u64,
    /// Requests per latency bucket (the last one: above every bound).
    buckets: [u64; LATENCY_BUCKETS + 1],
    /// The (protocol, code, error reason) series this version has, so that
    /// they go with it when it is unloaded (a handful per version).
    series: Vec<(&'static str, u16, Option<&'static str>)>,
}

impl Tally {
    fn percentile(&self, q: f64) -> Option<u32> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_ms(i));
            }
        }
        Some(bucket_ms(LATENCY_BUCKETS))
    }
}

fn batch_histogram() -> Histogram {
    // 1 .. 256 rows
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// Handles to the serving metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<ModelLabels, Histogram, fn() -> Histogram>,
    batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<ModelLabels, Gauge>,
    generated_tokens: Family<ModelLabels, Counter>,
    /// By model, then version: a request borrows both names to find its tally.
    tallies: Arc<Mutex<HashMap<String, HashMap<String, Tally>>>>,
}

impl Metrics {
    /// Creates the metrics and registers them (names start `gogrid_serve_`).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "gogrid_serve_requests",
            "Inference requests by model, version, protocol and outcome code",
            metrics.requests.clone(),
        );
        registry.register(
            "gogrid_serve_errors",
            "Failed inference requests by model, version and reason",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "gogrid_serve_request_duration",
            "Inference request latency, arrival to last byte of the answer",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        registry.register(
            "gogrid_serve_batch_size",
            "Rows per batch handed to a backend",
            metrics.batch_size.clone(),
        );
        registry.register(
            "gogrid_serve_queue_depth",
            "Requests waiting in a model version's queue",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "gogrid_serve_generated_tokens",
            "Tokens generated (rate() gives tokens per second)",
            metrics.generated_tokens.clone(),
        );
        metrics
    }

    /// Metrics that no registry exposes (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            generated_tokens: Family::default(),
            tallies: Arc::default(),
        }
    }

    /// What `model` `version` has served since it was loaded.
    pub fn version_stats(&self, model: &str, version: &str) -> Option<VersionStats> {
        let tallies = self.tallies.lock().ok()?;
        let t = tallies.get(model)?.get(version)?;
        Some(VersionStats {
            requests: t.requests,
            errors: t.errors,
            p50_ms: t.percentile(0.50),
            p95_ms: t.percentile(0.95),
            p99_ms: t.percentile(0.99),
            buckets: t.buckets,
        })
    }

    /// Records one finished request: its outcome `code` (HTTP status, or the
    /// gRPC code's HTTP equivalent), the error reason if any, and its latency.
    pub fn record_request(
        &self,
        model: &str,
        version: &str,
        protocol: Protocol,
        code: u16,
        error: Option<&'static str>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_owned(),
                version: version.to_owned(),
                protocol: protocol.as_str(),
                code: code.to_string(),
            })
            .inc();
        if let Some(reason) = error {
            self.errors
                .get_or_create(&ErrorLabels {
                    model: model.to_owned(),
                    version: version.to_owned(),
                    reason,
                })
                .inc();
        }
        self.latency
            .get_or_create(&labels(model, version))
            .observe(elapsed.as_secs_f64());
        if model != UNKNOWN
            && let Ok(mut tallies) = self.tallies.lock()
        {
            let versions = match tallies.get_mut(model) {
                Some(v) => v,
                None => tallies.entry(model.to_owned()).or_default(),
            };
            let t = match versions.get_mut(version) {
                Some(t) => t,
                None => versions.entry(version.to_owned()).or_default(),
            };
            t.requests += 1;
            let series = (protocol.as_str(), code, error);
            if !t.series.contains(&series) {
                t.series.push(series);
            }
            if code >= 500 {
                t.errors += 1;
            }
            let ms = elapsed.as_secs_f64() * 1e3;
            let i = (0..LATENCY_BUCKETS)
                .find(|&i| ms <= f64::from(bucket_ms(i)))
                .unwrap_or(LATENCY_BUCKETS);
            t.buckets[i] += 1;
        }
    }

    /// Records the size of one batch.
    pub(crate) fn record_batch(&self, model: &str, version: &str, rows: usize) {
        self.batch_size
            .get_or_create(&labels(model, version))
            .observe(rows as f64);
    }

    /// Sets the queue depth of one model version.
    pub(crate) fn set_queue_depth(&self, model: &str, version: &str, depth: usize) {
        let depth = i64::try_from(depth).unwrap_or(i64::MAX);
        self.queue_depth
            .get_or_create(&labels(model, version))
            .set(depth);
    }

    /// Counts generated tokens.
    pub(crate) fn add_tokens(&self, model: &str, version: &str, tokens: u64) {
        self.generated_tokens
            .get_or_create(&labels(model, version))
            .inc_by(tokens);
    }

    /// Forgets every series of a removed model version: a rollout's old
    /// versions do not stay in the exposition for the life of the agent.
    pub(crate) fn forget(&self, model: &str, version: &str) {
        let key = labels(model, version);
        self.queue_depth.remove(&key);
        self.latency.remove(&key);
        self.batch_size.remove(&key);
        self.generated_tokens.remove(&key);
        if let Ok(mut tallies) = self.tallies.lock()
            && let Some(versions) = tallies.get_mut(model)
        {
            if let Some(t) = versions.remove(version) {
                for (protocol, code, reason) in t.series {
                    self.requests.remove(&RequestLabels {
                        model: model.to_owned(),
                        version: version.to_owned(),
                        protocol,
                        code: code.to_string(),
                    });
                    if let Some(reason) = reason {
                        self.errors.remove(&ErrorLabels {
                            model: model.to_owned(),
                            version: version.to_owned(),
                            reason,
                        });
                    }
                }
            }
            if versions.is_empty() {
                tallies.remove(model);
            }
        }
    }
}

fn labels(model: &str, version: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_owned(),
        version: version.to_owned(),
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    #[test]
    fn version_stats_count_server_errors_and_place_percentiles_in_buckets() {
        let m = Metrics::unregistered();
        assert_eq!(m.version_stats("m", "1"), None);
        for i in 0..100u64 {
            // 90 fast (3 ms), 10 slow (300 ms); one 503, one 400, one 429.
            let ms = if i < 90 { 3 } else { 300 };
            let code = match i {
                0 => 503,
                1 => 400,
                2 => 429,
                _ => 200,
            };
            m.record_request(
                "m",
                "1",
                Protocol::Rest,
                code,
                None,
                Duration::from_millis(ms),
            );
        }
        let s = m.version_stats("m", "1").expect("stats");
        assert_eq!((s.requests, s.errors), (100, 1));
        assert_eq!(s.p50_ms, Some(4), "3 ms falls in the (2, 4] ms bucket");
        assert_eq!(
            s.p95_ms,
            Some(512),
            "300 ms falls in the (256, 512] ms bucket"
        );
        m.record_request(UNKNOWN, "", Protocol::Rest, 404, None, Duration::ZERO);
        assert_eq!(
            m.version_stats(UNKNOWN, ""),
            None,
            "unknown models are not tallied"
        );
        m.forget("m", "1");
        assert_eq!(m.version_stats("m", "1"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn a_recorded_request_shows_up_with_model_version_protocol_and_code() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.record_request(
            "m",
            "1",
            Protocol::Grpc,
            429,
            Some("throttled"),
            Duration::from_millis(3),
        );
        metrics.record_batch("m", "1", 4);
        let mut text = String::new();
        assert!(encode(&mut text, &registry).is_ok());
        assert!(text.contains(
            r#"gogrid_serve_requests_total{model="m",version="1",protocol="grpc",code="429"} 1"#
        ));
        assert!(
            text.contains(
                r#"gogrid_serve_errors_total{model="m",version="1",reason="throttled"} 1"#
            )
        );
        assert!(text.contains("gogrid_serve_request_duration_seconds_count"));
        assert!(text.contains("gogrid_serve_batch_size_sum{model=\"m\",version=\"1\"} 4"));
    }

    #[test]
    fn an_unloaded_version_takes_all_its_series_with_it() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        for (version, code, reason) in [
            ("1", 200, None),
            ("1", 400, Some("invalid_argument")),
            ("2", 200, None),
        ] {
            metrics.record_request(
                "m",
                version,
                Protocol::Rest,
                code,
                reason,
                Duration::from_millis(3),
            );
            metrics.record_batch("m", version, 1);
            metrics.add_tokens("m", version, 2);
            metrics.set_queue_depth("m", version, 0);
        }
        metrics.forget("m", "1");
        let mut text = String::new();
        assert!(encode(&mut text, &registry).is_ok());
        assert!(
            !text.contains(r#"version="1""#),
            "series of the unloaded version left:\n{text}"
        );
        assert!(
            text.contains(
                r#"gogrid_serve_requests_total{model="m",version="2",protocol="rest",code="200"} 1"#
            ),
            "the version still loaded keeps its series:\n{text}"
        );
    }
}
