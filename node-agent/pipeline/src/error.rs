//! The errors of this crate: `LoadError` for loading a model (its messages end up in
//! Kubernetes status conditions) and `Error` for running one.

use std::path::PathBuf;

use crate::plan::PlanError;
use crate::{Format, Task};

/// Why a model could not be loaded. `Display` is one sentence naming the file, field or
/// value at fault, fit for a status condition's message; [`LoadError::reason`] is the
/// condition's PascalCase reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The weights file (or a file that must sit beside it) does not exist.
    #[error("model file {} does not exist", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read model file {}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The expected checksum in the spec is not a sha256 digest.
    #[error("sha256 {value:?} is not 64 lowercase hexadecimal digits")]
    InvalidChecksum {
        /// The value given.
        value: String,
    },
    /// The file's sha256 is not the one the spec expects.
    #[error("checksum mismatch for {}: expected sha256 {expected}, the file has {actual}", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The digest the spec asked for.
        expected: String,
        /// The digest of the file on disk.
        actual: String,
    },
    /// The file is not a well-formed file of the declared format.
    #[error("{} is not a valid {format} file: {reason}", path.display())]
    InvalidFormat {
        /// The file.
        path: PathBuf,
        /// The declared format.
        format: Format,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata or config field the model needs is absent or has the wrong type.
    #[error("{}: field {field} is missing or malformed", path.display())]
    MissingField {
        /// The file that should carry the field.
        path: PathBuf,
        /// The field's name.
        field: String,
    },
    /// A field names an architecture (or a variant of one) that this crate cannot run.
    #[error("{}: {field} is {value:?}, which is not supported (supported: {supported})", path.display())]
    Unsupported {
        /// The file carrying the field.
        path: PathBuf,
        /// The field's name.
        field: String,
        /// The value found.
        value: String,
        /// What would have been accepted.
        supported: String,
    },
    /// The format cannot serve the task (for example a GGUF file for embeddings).
    #[error(
        "task {task} is not supported for {format} models (supported: gguf text-generation, safetensors embedding)"
    )]
    UnsupportedTask {
        /// The declared format.
        format: Format,
        /// The declared task.
        task: Task,
    },
    /// The tokenizer could not be built.
    #[error("cannot build the tokenizer from {}: {reason}", path.display())]
    Tokenizer {
        /// The file the tokenizer comes from.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The spec lists no device to load onto.
    #[error("no device to load the model onto: the spec lists none")]
    NoDevices,
    /// The stages do not fit the devices, or the explicit stages are not valid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Building the model from the weights failed.
    #[error("cannot build the model from {}: {source}", path.display())]
    Model {
        /// The weights file.
        path: PathBuf,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
}

impl LoadError {
    /// The PascalCase reason for a status condition or an Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "ModelNotFound",
            Self::Io { .. } => "ModelUnreadable",
            Self::InvalidChecksum { .. } => "InvalidChecksum",
            Self::ChecksumMismatch { .. } => "ChecksumMismatch",
            Self::InvalidFormat { .. } | Self::MissingField { .. } | Self::Tokenizer { .. } => {
                "InvalidModel"
            }
            Self::Unsupported { .. } | Self::UnsupportedTask { .. } => "UnsupportedModel",
            Self::NoDevices => "NoDevices",
            Self::Plan(e) if e.is_capacity() => "InsufficientMemory",
            Self::Plan(_) => "InvalidStages",
            Self::Model { .. } => "ModelLoadFailed",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound { path }
        } else {
            Self::Io { path, source }
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, source: candle_core::Error) -> Self {
        Self::Model {
            path: path.into(),
            source,
        }
    }
}

/// Why a request to a loaded model failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is not valid (an empty prompt, a prompt longer than the
    /// context): the caller's fault, an HTTP 400.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// Tokenizing or detokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model computation failed.
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn tokenizer(err: impl std::fmt::Display) -> Self {
        Self::Tokenizer(err.to_string())
    }
}

/// The result of running a model.
pub type Result<T, E = Error> = std::result::Result<T, E>;
