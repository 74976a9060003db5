//! The shared server state (registry, limits, identity) and per-request bookkeeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Span;

use crate::error::ServeError;
use crate::metrics::{Protocol, UNKNOWN};
use crate::registry::{ModelVersion, Registry};

/// Explicit size limits of both servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest REST request body; larger ones get 413.
    pub max_request_bytes: usize,
    /// The largest gRPC message decoded or encoded (tonic's default is 4 MiB).
    pub max_grpc_message_bytes: usize,
}

impl Default for Limits {
    /// 64 MiB each: room for batches of large tensors.
    fn default() -> Self {
        Self {
            max_request_bytes: 64 << 20,
            max_grpc_message_bytes: 64 << 20,
        }
    }
}

/// What both servers share; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServeState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    limits: Limits,
    server_name: String,
}

impl ServeState {
    /// State serving `registry` under `limits`; the server calls itself `gogrid`.
    pub fn new(registry: Arc<Registry>, limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                limits,
                server_name: "gogrid".to_owned(),
            }),
        }
    }

    /// The models served.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The size limits.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The server name reported by server metadata.
    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    /// Starts the bookkeeping of one inference request.
    pub(crate) fn begin(&self, protocol: Protocol, model: &str, version: Option<&str>) -> Tracker {
        let span = tracing::info_span!(
            "infer",
            model = %model,
            version = version.unwrap_or(""),
            protocol = protocol.as_str(),
        );
        Tracker {
            state: self.clone(),
            protocol,
            model: model.to_owned(),
            version: version.unwrap_or("").to_owned(),
            started: Instant::now(),
            span,
            done: AtomicBool::new(false),
        }
    }
}

/// Times one request and records its outcome once it is known; a request
/// dropped before that (the client went away) is recorded as code 499, reason
/// `cancelled`.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: ServeState,
    protocol: Protocol,
    model: String,
    version: String,
    started: Instant,
    span: Span,
    done: AtomicBool,
}

/// The outcome code of requests whose client went away (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            let (model, version) = self.labels();
            self.state.registry().metrics().record_request(
                model,
                version,
                self.protocol,
                CLIENT_CLOSED,
                Some("cancelled"),
                self.elapsed(),
            );
        }
    }
}

impl Tracker {
    /// The request's tracing span.
    pub(crate) fn span(&self) -> Span {
        self.span.clone()
    }

    /// Records the outcome; `resolved` is the version that answered, if any.
    pub(crate) fn finish(&self, resolved: Option<&ModelVersion>, error: Option<&ServeError>) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let (model, version) = match resolved {
            Some(entry) => (entry.model(), entry.version()),
            None => self.labels(),
        };
        let code = error.map_or(200, |e| e.http_status().as_u16());
        let elapsed = self.elapsed();
        if let Some(error) = error {
            tracing::debug!(parent: &self.span, %error, code, "request failed");
        }
        self.state.registry().metrics().record_request(
            model,
            version,
            self.protocol,
            code,
            error.map(ServeError::metric_label),
            elapsed,
        );
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Label values for a request that resolved to no version: only names the
    /// registry knows become label values.
    fn labels(&self) -> (&str, &str) {
        let registry = self.state.registry();
        if !registry.contains(&self.model) {
            return (UNKNOWN, UNKNOWN);
        }
        let version = if registry.version(&self.model, &self.version).is_ok() {
            self.version.as_str()
        } else {
            UNKNOWN
        };
        (self.model.as_str(), version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::AdmitAll;
    use crate::batcher::BatchPolicy;
    use crate::metrics::Metrics;

    #[test]
    fn a_request_dropped_before_its_outcome_counts_as_cancelled_once() {
        let mut prometheus = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut prometheus);
        let (_, policy) = tokio::sync::watch::channel(BatchPolicy::default());
        let registry = Arc::new(Registry::new(policy, Arc::new(AdmitAll), metrics));
        let state = ServeState::new(registry, Limits::default());
        drop(state.begin(Protocol::Rest, "anything", None));
        let finished = state.begin(Protocol::Grpc, "anything", None);
        finished.finish(None, Some(&ServeError::NotFound("x".into())));
        drop(finished);
        let mut text = String::new();
        assert!(prometheus_client::encoding::text::encode(&mut text, &prometheus).is_ok());
        let count = |needle: &str| text.lines().filter(|l| l.starts_with(needle)).count();
        assert_eq!(
            count(
                r#"gogrid_serve_requests_total{model="unknown",version="unknown",protocol="rest",code="499"} 1"#
            ),
            1
        );
        assert_eq!(
            count(
                r#"gogrid_serve_requests_total{model="unknown",version="unknown",protocol="grpc""#
            ),
            1
        );
        assert_eq!(
            count(
                r#"gogrid_serve_errors_total{model="unknown",version="unknown",reason="cancelled"} 1"#
            ),
            1
        );
    }
}
