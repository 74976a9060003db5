//! The node's policy as the serving layer's `Admission`, run on the model's
//! worker thread before every batch: the batch's activation estimate is
//! reserved in the VRAM ledger (refused with 503 and the ledger's reason when
//! it would break the budget: never run over it), then the gate of the device
//! the model runs on
//! admits it (interval, duty cycle, batch size); a batch that cannot start
//! before the deadline is answered 429 with Retry-After. Both are held through
//! the batch: the reservation is returned and the duty cycle fed when it ends.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gogrid_serve::{Admission, Permit, Rejection};

use crate::policy::ledger::{Device, Ledger, Use};
use crate::policy::throttle::{Gates, Refused};

/// How long a batch may wait for its turn before the client is told to retry.
pub const ADMISSION_DEADLINE: Duration = Duration::from_secs(2);

/// Where a model version's batches run and what each item needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// The device its weights are on.
    pub device: Device,
    /// Activation estimate of one batch item, in bytes.
    pub per_item_bytes: u64,
}

/// Admission through the ledger and the gate of the device a model runs on.
#[derive(Debug)]
pub struct GateAdmission {
    gates: Arc<Gates>,
    ledger: Arc<Ledger>,
    deadline: Duration,
    /// By model, then version; read once per batch, written at load.
    footprints: RwLock<HashMap<String, HashMap<String, Footprint>>>,
}

impl GateAdmission {
    /// Admit through `ledger` and `gates`, waiting at most `deadline` per batch.
    pub fn new(gates: Arc<Gates>, ledger: Arc<Ledger>, deadline: Duration) -> Self {
        Self {
            gates,
            ledger,
            deadline,
            footprints: RwLock::new(HashMap::new()),
        }
    }

    /// Record (or with `None` forget) what a model version's batches need.
    pub fn set_footprint(&self, model: &str, version: &str, footprint: Option<Footprint>) {
        if let Ok(mut map) = self.footprints.write() {
            match footprint {
                Some(f) => {
                    map.entry(model.to_owned())
                        .or_default()
                        .insert(version.to_owned(), f);
                }
                None => {
                    if let Some(versions) = map.get_mut(model) {
                        versions.remove(version);
                    }
                }
            }
        }
    }

    fn footprint(&self, model: &str, version: &str) -> Option<Footprint> {
        let map = self.footprints.read().ok()?;
        map.get(model)?.get(version).copied()
    }
}

impl Admission for GateAdmission {
    fn admit(&self, model: &str, version: &str, batch_len: usize) -> Result<Permit, Rejection> {
        let n = u32::try_from(batch_len).unwrap_or(u32::MAX);
        let footprint = self.footprint(model, version);
        let gate = self.gates.get(footprint.map_or(Device::Cpu, |f| f.device));
        let memory = match footprint {
            Some(f) if f.per_item_bytes > 0 => {
                let need = f.per_item_bytes.saturating_mul(u64::from(n));
                Some(
                    self.ledger
                        .try_reserve(f.device, need, Use::Activations)
                        .map_err(|refusal| Rejection::Refused {
                            reason: refusal.to_string(),
                        })?,
                )
            }
            _ => None,
        };
        // The batcher never groups requests beyond the policy's batch size, but
        // one client request may carry more rows: it runs alone, as a full batch.
        let rows = n.min(gate.max_batch()).max(1);
        // Model workers are plain threads: the blocking wait sleeps precisely
        // (tokio's timer would round every duty-cycle idle up to a millisecond).
        match gate.admit_blocking(rows, Instant::now() + self.deadline) {
            Ok(permit) => Ok(Permit::with_guard((permit, memory))),
            Err(Refused::Deadline { retry_after }) => Err(Rejection::Throttled { retry_after }),
            Err(other) => Err(Rejection::Refused {
                reason: other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::Preset;
    use gogrid_crds::policy::preset_policy;

    fn admission(budget: i64) -> (GateAdmission, Arc<Ledger>) {
        let ledger = Arc::new(Ledger::new([(Device::Cpu, budget)]));
        let gates = Arc::new(Gates::new(
            [Device::Cpu],
            &preset_policy(Preset::Aggressive),
        ));
        let a = GateAdmission::new(gates, ledger.clone(), ADMISSION_DEADLINE);
        a.set_footprint(
            "m",
            "v1",
            Some(Footprint {
                device: Device::Cpu,
                per_item_bytes: 100,
            }),
        );
        (a, ledger)
    }

    #[test]
    fn a_batch_holds_its_activation_estimate_until_it_ends() {
        let (a, ledger) = admission(1_000);
        let permit = a.admit("m", "v1", 4).expect("400 of 1000 fit");
        assert_eq!(ledger.usage(Device::Cpu).map(|u| u.activations), Some(400));
        drop(permit);
        assert_eq!(ledger.usage(Device::Cpu).map(|u| u.activations), Some(0));
    }

    #[test]
    fn one_request_with_more_rows_than_the_policys_batch_runs_alone() {
        let (a, _) = admission(1 << 20);
        assert!(
            a.admit("m", "v1", 40).is_ok(),
            "aggressive allows 16; 40 rows run as one batch"
        );
    }

    #[test]
    fn a_batch_whose_estimate_breaks_the_budget_is_refused_not_run() {
        let (a, ledger) = admission(1_000);
        let _held = a.admit("m", "v1", 8).expect("800 fit");
        match a.admit("m", "v1", 3) {
            Err(Rejection::Refused { reason }) => {
                assert!(
                    reason.contains("cpu") && reason.contains("activations"),
                    "{reason}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(ledger.usage(Device::Cpu).map(|u| u.used), Some(800));
    }
}
