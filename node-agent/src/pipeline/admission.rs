//! The node's throttle policy as the serving layer's `Admission`: every batch
//! passes the device's gate (interval, duty cycle, batch size) on the model's
//! worker thread; a batch that cannot start before the deadline is answered
//! 429 with Retry-After, and the permit held through the batch feeds the duty
//! cycle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gogrid_serve::{Admission, Permit, Rejection};

use crate::policy::throttle::{Gate, Refused};

/// How long a batch may wait for its turn before the client is told to retry.
pub const ADMISSION_DEADLINE: Duration = Duration::from_secs(2);

/// Admission through one device's gate.
#[derive(Debug, Clone)]
pub struct GateAdmission {
    gate: Arc<Gate>,
    deadline: Duration,
    /// The gate waits on tokio timers; model workers are plain threads.
    runtime: tokio::runtime::Handle,
}

impl GateAdmission {
    /// Admit through `gate`, waiting at most `deadline` per batch. Call from
    /// inside the agent's tokio runtime.
    pub fn new(gate: Arc<Gate>, deadline: Duration) -> Self {
        Self {
            gate,
            deadline,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl Admission for GateAdmission {
    fn admit(&self, _model: &str, _version: &str, batch_len: usize) -> Result<Permit, Rejection> {
        let n = u32::try_from(batch_len).unwrap_or(u32::MAX);
        let admitted = self
            .runtime
            .block_on(self.gate.admit(n, Instant::now() + self.deadline));
        match admitted {
            Ok(permit) => Ok(Permit::with_guard(permit)),
            Err(Refused::Deadline { retry_after }) => Err(Rejection::Throttled { retry_after }),
            Err(other) => Err(Rejection::Refused {
                reason: other.to_string(),
            }),
        }
    }
}
