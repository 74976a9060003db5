//! The serving error: one variant per Triton error class, mapped to HTTP and gRPC codes.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A `Result` whose error is a [`ServeError`].
pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// Why a request failed. Each variant maps to one HTTP status and one gRPC code
/// (Triton's mapping); the message names the field or value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// Malformed or inconsistent input: HTTP 400, gRPC `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown model, version or route: HTTP 404, gRPC `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// Not ready, loading, refused (e.g. for VRAM) or queue full: HTTP 503, gRPC `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// The node's throttle policy says not now: HTTP 429 with `Retry-After`,
    /// gRPC `RESOURCE_EXHAUSTED` with a `retry-after` metadata entry.
    #[error("{message}")]
    Throttled {
        /// What was throttled.
        message: String,
        /// When the client may try again.
        retry_after: Duration,
    },
    /// A feature this server does not implement: HTTP 501, gRPC `UNIMPLEMENTED`.
    #[error("{0}")]
    Unsupported(String),
    /// The body or message is over the configured limit: HTTP 413, gRPC `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client's deadline passed before the answer: HTTP 504, gRPC
    /// `DEADLINE_EXCEEDED` (the client's doing, not the server's fault).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or a backend failure: HTTP 500, gRPC `INTERNAL`.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// Shorthand for [`ServeError::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Shorthand for [`ServeError::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::Unsupported(message.into())
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Throttled { .. } | Self::PayloadTooLarge(_) => tonic::Code::ResourceExhausted,
            Self::Unsupported(_) => tonic::Code::Unimplemented,
            Self::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Self::Internal(_) => tonic::Code::Internal,
        }
    }

    /// A short, fixed label for metrics (`reason` of the errors counter).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Throttled { .. } => "throttled",
            Self::Unsupported(_) => "unsupported",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::Internal(_) => "internal",
        }
    }

    /// `Retry-After` in whole seconds, rounded up and at least 1, for throttled errors.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Throttled { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            _ => None,
        }
    }

    /// The gRPC status carrying this error (and `retry-after` metadata when throttled).
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        if let Some(secs) = self.retry_after_secs()
            && let Ok(value) = secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> Self {
        error.to_status()
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        let mut response = (self.http_status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_sub_second_delays_up_to_one_second() {
        let error = ServeError::Throttled {
            message: "slow down".into(),
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(error.retry_after_secs(), Some(2));
        let short = ServeError::Throttled {
            message: "slow down".into(),
            retry_after: Duration::from_millis(50),
        };
        assert_eq!(short.retry_after_secs(), Some(1));
    }

    #[test]
    fn each_error_class_maps_to_its_triton_status() {
        assert_eq!(
            ServeError::invalid("x").http_status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ServeError::NotFound("x".into()).grpc_code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            ServeError::unsupported("x").http_status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            ServeError::Unavailable("x".into()).grpc_code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn throttled_status_carries_retry_after_metadata() {
        let status = ServeError::Throttled {
            message: "busy".into(),
            retry_after: Duration::from_secs(3),
        }
        .to_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
}
