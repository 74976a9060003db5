//! The node's throttle policy as seen by the batcher: admit a batch, or say why not.

use std::any::Any;
use std::time::Duration;

/// Why a batch was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Not now: the clients get 429 with `Retry-After`.
    Throttled {
        /// When to try again.
        retry_after: Duration,
    },
    /// Not at all under the current policy (e.g. no VRAM budget): the clients get 503.
    Refused {
        /// Said to the client.
        reason: String,
    },
}

/// Held while a batch runs and dropped right after it, so a policy can measure
/// busy time (duty cycle) or hold a slot.
pub struct Permit(Option<Box<dyn Any + Send>>);

impl Permit {
    /// A permit that holds nothing.
    pub fn free() -> Self {
        Self(None)
    }

    /// A permit that drops `guard` when the batch is done.
    pub fn with_guard(guard: impl Any + Send) -> Self {
        Self(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Permit").field(&self.0.is_some()).finish()
    }
}

/// The agent's admission policy, asked on the model's worker thread right before
/// each batch runs. It must be cheap (well under a microsecond) and must not block.
pub trait Admission: Send + Sync + 'static {
    /// Admits a batch of `batch_len` rows for `model`/`version`, or rejects it.
    fn admit(&self, model: &str, version: &str, batch_len: usize) -> Result<Permit, Rejection>;
}

/// Admits everything: for tests and nodes without a policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&self, _model: &str, _version: &str, _batch_len: usize) -> Result<Permit, Rejection> {
        Ok(Permit::free())
    }
}
