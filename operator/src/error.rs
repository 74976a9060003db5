//! The operator's one error type. Each variant names what failed; `metric_label`
//! and `reason` classify it for metrics and Events.

use gogrid_crds::FieldError;

/// Everything a reconcile can fail with.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing, e.g. "applying DaemonSet gogrid-agent-default".
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The spec asks for something the schema could not rule out but that cannot be done.
    #[error("invalid spec: {field}: {message}")]
    InvalidSpec {
        /// JSON path of the field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The profile's policy does not resolve.
    #[error("invalid policy: {0}")]
    Policy(#[from] FieldError),
    /// The object was deleted at the API server while the cache still held it.
    #[error("the object is gone (deleted at the API server)")]
    Gone,
    /// An object lacks a field the API server always sets.
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// A value could not be turned into JSON.
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap a client error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Low-cardinality label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::Policy(_) => "invalid_policy",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::Serialize { .. } => "serialize",
            Error::Gone => "gone",
        }
    }

    /// PascalCase reason for Events and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApiError",
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::Policy(_) => "InvalidPolicy",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::Serialize { .. } => "SerializeError",
            Error::Gone => "Gone",
        }
    }

    /// Whether retrying without a spec change can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Kube { .. })
    }

    /// The whole source chain as one line.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = s.source();
        }
        out
    }
}
