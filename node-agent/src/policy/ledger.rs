//! The VRAM ledger: what each device's budget allows and what is reserved on
//! it, with lock-free accounting and RAII reservations.
//!
//! Each device keeps its used bytes in one `AtomicI64` updated by a CAS loop,
//! so a reservation costs a few atomic operations and never allocates. Pipeline
//! weights (long-lived) and per-request activation estimates (short-lived) are
//! reserved the same way; [`Reservation`] gives its bytes back when dropped.
//!
//! A budget may change at any time. Lowering it below what is in use revokes
//! nothing: new reservations are refused until usage falls under it.

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Instant;

use gogrid_crds::gpu_node::Budget;
use gogrid_crds::quantity::human;
use tokio::sync::Notify;

/// A device whose memory the ledger accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// A GPU, by NVML index.
    Gpu(u32),
    /// The CPU device of a node without GPUs (host memory).
    Cpu,
}

impl Device {
    /// The device a GpuNode budget entry names (`None` is the CPU device).
    pub fn from_index(index: Option<u32>) -> Self {
        index.map_or(Self::Cpu, Self::Gpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gpu(i) => write!(f, "gpu {i}"),
            Self::Cpu => f.write_str("cpu"),
        }
    }
}

/// What a reservation holds memory for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Use {
    /// A pipeline stage's weights, held while the pipeline is loaded.
    Weights,
    /// One request's (or batch's) activation estimate, held while it runs.
    Activations,
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Weights => "weights",
            Self::Activations => "activations",
        })
    }
}

/// Why a reservation was not made.
#[derive(thiserror::Error, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The budget has no room for the request.
    #[error(
        "{device}: needs {} for {what}, budget {} of which {} in use",
        human(*need),
        human(*budget),
        human(*in_use)
    )]
    OverBudget {
        /// The device asked for.
        device: Device,
        /// What the memory was for.
        what: Use,
        /// Bytes asked for.
        need: i64,
        /// The device's budget when the request was checked.
        budget: i64,
        /// Bytes already reserved then.
        in_use: i64,
    },
    /// The ledger does not know the device.
    #[error("{device}: no such device on this node")]
    UnknownDevice {
        /// The device asked for.
        device: Device,
    },
}

/// Used and budgeted bytes of one device, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceUsage {
    /// The device.
    pub device: Device,
    /// Its budget in bytes.
    pub budget: i64,
    /// Bytes reserved, all uses together.
    pub used: i64,
    /// Bytes reserved for weights.
    pub weights: i64,
    /// Bytes reserved for activations.
    pub activations: i64,
}

#[derive(Debug)]
struct Slot {
    device: Device,
    budget: AtomicI64,
    used: AtomicI64,
    weights: AtomicI64,
    activations: AtomicI64,
    /// Tasks inside [`Ledger::reserve_wait`]; releases skip the notification
    /// (a mutex inside `Notify`) while it is zero.
    waiters: AtomicUsize,
    released: Notify,
}

impl Slot {
    fn by_use(&self, what: Use) -> &AtomicI64 {
        match what {
            Use::Weights => &self.weights,
            Use::Activations => &self.activations,
        }
    }

    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }
}

/// The per-device VRAM ledger of the node. Share it in an `Arc`.
#[derive(Debug)]
pub struct Ledger {
    slots: Box<[Slot]>,
}

impl Ledger {
    /// A ledger for `devices`, each with its budget in bytes.
    pub fn new(devices: impl IntoIterator<Item = (Device, i64)>) -> Self {
        let slots = devices
            .into_iter()
            .map(|(device, budget)| Slot {
                device,
                budget: AtomicI64::new(budget.max(0)),
                used: AtomicI64::new(0),
                weights: AtomicI64::new(0),
                activations: AtomicI64::new(0),
                waiters: AtomicUsize::new(0),
                released: Notify::new(),
            })
            .collect();
        Self { slots }
    }

    /// A ledger for the devices of a GpuNode budget (see `policy::budget`).
    pub fn from_budget(budget: &Budget) -> Self {
        Self::new(
            budget
                .devices
                .iter()
                .map(|d| (Device::from_index(d.index), d.vram_budget_bytes)),
        )
    }

    /// Set the budgets of the devices a GpuNode budget names; other devices
    /// keep theirs.
    pub fn apply_budget(&self, budget: &Budget) {
        for d in &budget.devices {
            self.set_budget(Device::from_index(d.index), d.vram_budget_bytes);
        }
    }

    /// Set one device's budget (negative counts as zero). Returns false for an
    /// unknown device. Reservations already made stay, even above the budget.
    pub fn set_budget(&self, device: Device, bytes: i64) -> bool {
        let Some(slot) = self.slot(device) else {
            return false;
        };
        slot.budget.store(bytes.max(0), Ordering::SeqCst);
        slot.wake_waiters();
        true
    }

    /// Reserve `bytes` on `device` now, or say why not. Never waits and never
    /// allocates.
    pub fn try_reserve(
        self: &Arc<Self>,
        device: Device,
        bytes: u64,
        what: Use,
    ) -> Result<Reservation, Refusal> {
        let index = self
            .index(device)
            .ok_or(Refusal::UnknownDevice { device })?;
        let slot = &self.slots[index];
        // A request larger than i64::MAX cannot fit any budget.
        let need = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut in_use = slot.used.load(Ordering::SeqCst);
        loop {
            let budget = slot.budget.load(Ordering::SeqCst);
            let after = in_use.checked_add(need).filter(|after| *after <= budget);
            let Some(after) = after else {
                return Err(Refusal::OverBudget {
                    device,
                    what,
                    need,
                    budget,
                    in_use,
                });
            };
            match slot
                .used
                .compare_exchange_weak(in_use, after, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => in_use = now,
            }
        }
        slot.by_use(what).fetch_add(need, Ordering::Relaxed);
        Ok(Reservation {
            ledger: Arc::clone(self),
            index,
            bytes: need,
            what,
        })
    }

    /// Reserve `bytes` on `device`, waiting for releases (or a larger budget)
    /// until `deadline`. On a missed deadline, returns the last refusal. An
    /// unknown device is refused at once.
    pub async fn reserve_wait(
        self: &Arc<Self>,
        device: Device,
        bytes: u64,
        what: Use,
        deadline: Instant,
    ) -> Result<Reservation, Refusal> {
        let slot = self.slot(device).ok_or(Refusal::UnknownDevice { device })?;
        slot.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&slot.waiters);
        loop {
            // Register for the next release before checking, so that a release
            // between the check and the wait is not missed.
            let mut released = pin!(slot.released.notified());
            released.as_mut().enable();
            if let Ok(reservation) = self.try_reserve(device, bytes, what) {
                return Ok(reservation);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                // One last look: the release may have come with the deadline.
                return self.try_reserve(device, bytes, what);
            }
        }
    }

    /// Used and budgeted bytes of every device, in the order given at creation.
    pub fn snapshot(&self) -> Vec<DeviceUsage> {
        self.slots
            .iter()
            .map(|s| DeviceUsage {
                device: s.device,
                budget: s.budget.load(Ordering::SeqCst),
                used: s.used.load(Ordering::SeqCst),
                weights: s.weights.load(Ordering::Relaxed),
                activations: s.activations.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The usage of one device.
    pub fn usage(&self, device: Device) -> Option<DeviceUsage> {
        let s = self.slot(device)?;
        Some(DeviceUsage {
            device,
            budget: s.budget.load(Ordering::SeqCst),
            used: s.used.load(Ordering::SeqCst),
            weights: s.weights.load(Ordering::Relaxed),
            activations: s.activations.load(Ordering::Relaxed),
        })
    }

    fn index(&self, device: Device) -> Option<usize> {
        // A node has a handful of devices: a scan beats any map.
        self.slots.iter().position(|s| s.device == device)
    }

    fn slot(&self, device: Device) -> Option<&Slot> {
        self.index(device).map(|i| &self.slots[i])
    }
}

/// Counts a task in `Slot::waiters` for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Memory reserved on one device; given back when dropped.
#[must_use = "dropping a reservation releases its memory at once"]
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<Ledger>,
    index: usize,
    bytes: i64,
    what: Use,
}

impl Reservation {
    /// The device the memory is reserved on.
    pub fn device(&self) -> Device {
        self.ledger.slots[self.index].device
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes.unsigned_abs()
    }

    /// What the memory is for.
    pub fn what(&self) -> Use {
        self.what
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let slot = &self.ledger.slots[self.index];
        slot.by_use(self.what)
            .fetch_sub(self.bytes, Ordering::Relaxed);
        slot.used.fetch_sub(self.bytes, Ordering::SeqCst);
        slot.wake_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GI: u64 = 1 << 30;

    fn ledger() -> Arc<Ledger> {
        Arc::new(Ledger::new([
            (Device::Gpu(0), 8 << 30),
            (Device::Gpu(1), 4 << 30),
        ]))
    }

    #[test]
    fn a_reservation_counts_until_it_is_dropped() {
        let l = ledger();
        let weights = l
            .try_reserve(Device::Gpu(0), 3 * GI, Use::Weights)
            .expect("fits");
        let act = l
            .try_reserve(Device::Gpu(0), GI, Use::Activations)
            .expect("fits");
        let u = l.usage(Device::Gpu(0)).expect("known device");
        assert_eq!(
            (u.used, u.weights, u.activations),
            (4 << 30, 3 << 30, 1 << 30)
        );
        drop(act);
        assert_eq!(l.usage(Device::Gpu(0)).expect("known").used, 3 << 30);
        drop(weights);
        assert_eq!(l.usage(Device::Gpu(0)).expect("known").used, 0);
        assert_eq!(
            l.usage(Device::Gpu(1)).expect("known").used,
            0,
            "other devices untouched"
        );
    }

    #[test]
    fn a_refusal_names_the_device_the_need_the_budget_and_the_use() {
        let l = ledger();
        let _w = l
            .try_reserve(Device::Gpu(1), 3 * GI, Use::Weights)
            .expect("fits");
        let err = l
            .try_reserve(Device::Gpu(1), 2 * GI, Use::Activations)
            .expect_err("over budget");
        assert_eq!(
            err.to_string(),
            "gpu 1: needs 2.0Gi for activations, budget 4.0Gi of which 3.0Gi in use"
        );
        let err = l
            .try_reserve(Device::Cpu, 1, Use::Weights)
            .expect_err("no cpu device");
        assert_eq!(err.to_string(), "cpu: no such device on this node");
    }

    #[test]
    fn lowering_the_budget_revokes_nothing_but_refuses_until_usage_falls() {
        let l = ledger();
        let a = l
            .try_reserve(Device::Gpu(0), 6 * GI, Use::Weights)
            .expect("fits");
        assert!(l.set_budget(Device::Gpu(0), 4 << 30));
        assert_eq!(
            l.usage(Device::Gpu(0)).expect("known").used,
            6 << 30,
            "kept"
        );
        assert!(l.try_reserve(Device::Gpu(0), 1, Use::Activations).is_err());
        drop(a);
        assert!(
            l.try_reserve(Device::Gpu(0), 4 * GI, Use::Activations)
                .is_ok()
        );
        assert!(!l.set_budget(Device::Gpu(7), 1), "unknown device");
    }

    #[test]
    fn a_request_larger_than_any_budget_is_refused_not_wrapped() {
        let l = ledger();
        let _a = l
            .try_reserve(Device::Gpu(0), GI, Use::Weights)
            .expect("fits");
        assert!(
            l.try_reserve(Device::Gpu(0), u64::MAX, Use::Weights)
                .is_err()
        );
        assert_eq!(l.usage(Device::Gpu(0)).expect("known").used, 1 << 30);
    }

    #[tokio::test]
    async fn a_waiting_reservation_succeeds_once_memory_is_released() {
        let l = ledger();
        let held = l
            .try_reserve(Device::Gpu(1), 3 * GI, Use::Weights)
            .expect("fits");
        let waiter = {
            let l = Arc::clone(&l);
            let deadline = Instant::now() + Duration::from_secs(60);
            tokio::spawn(async move {
                l.reserve_wait(Device::Gpu(1), 2 * GI, Use::Activations, deadline)
                    .await
                    .map(|r| r.bytes())
            })
        };
        // The waiter cannot finish while the weights are held.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.expect("task"), Ok(2 * GI));
        assert_eq!(l.usage(Device::Gpu(1)).expect("known").used, 0);
    }

    #[tokio::test]
    async fn a_raised_budget_also_wakes_a_waiting_reservation() {
        let l = ledger();
        let deadline = Instant::now() + Duration::from_secs(60);
        let waiter = {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                l.reserve_wait(Device::Gpu(1), 6 * GI, Use::Weights, deadline)
                    .await
                    .map(|r| r.bytes())
            })
        };
        tokio::task::yield_now().await;
        l.set_budget(Device::Gpu(1), 6 << 30);
        assert_eq!(waiter.await.expect("task"), Ok(6 * GI));
    }

    #[tokio::test]
    async fn a_waiting_reservation_gives_up_at_the_deadline() {
        let l = ledger();
        let _held = l
            .try_reserve(Device::Gpu(1), 4 * GI, Use::Weights)
            .expect("fits");
        let deadline = Instant::now() + Duration::from_millis(20);
        let err = l
            .reserve_wait(Device::Gpu(1), GI, Use::Activations, deadline)
            .await
            .expect_err("nothing is released");
        assert!(matches!(err, Refusal::OverBudget { in_use, .. } if in_use == 4 << 30));
        assert_eq!(l.usage(Device::Gpu(1)).expect("known").used, 4 << 30);
    }
}
