//! The admission gate of one device: the minimum interval between requests,
//! the compute duty cycle, one batch at a time and the largest batch.
//!
//! Every decision is made on atomics, without a lock and without allocating:
//! - `last_admitted` is the real clock reading of the latest admission; a
//!   batch is admitted only if the clock reads at least the interval past it,
//!   so admitted timestamps are spaced by the interval however callers race.
//! - `next_free` is when the device may run again: `RUNNING` while an
//!   admitted batch holds the device (the token of "one batch at a time"),
//!   then, once [`Gate::finish`] reports `busy`, the end of the batch plus the
//!   idle time the duty cycle asks for: `busy * (1 - cap) / cap`.
//!
//! Only the holder of the device writes `last_admitted`, and it reads the
//! clock again after taking the device, so the timestamp it returns is the one
//! the next admission is measured against.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gogrid_crds::EffectivePolicy;
use tokio::sync::Notify;

mod waiting;

pub use waiting::Permit;

/// `last_admitted` before the first admission.
const NEVER: u64 = u64::MAX;
/// `next_free` while an admitted batch holds the device.
const RUNNING: u64 = u64::MAX;
/// How long a caller that finds the device busy is told to wait, at least.
const BUSY_HINT_NS: u64 = 1_000_000;
const PPM: u64 = 1_000_000;

/// A monotonic nanosecond clock relative to a fixed instant.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the origin.
    pub fn instant(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a caller must wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// The minimum interval since the last admission has not passed.
    Interval,
    /// The device is idling to keep its duty cycle under the cap.
    DutyCycle,
    /// Another batch holds the device; its end is unknown, so the wait is a hint.
    Busy,
}

/// Why a batch is refused.
#[derive(thiserror::Error, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// More items than the policy's largest batch.
    #[error("a batch of {n} exceeds the largest batch of {max}")]
    BatchTooLarge {
        /// Items asked for.
        n: u32,
        /// The policy's largest batch.
        max: u32,
    },
    /// A batch of no items.
    #[error("an empty batch")]
    EmptyBatch,
    /// The gate would not admit before the caller's deadline.
    #[error("throttled: not admitted before the deadline, retry after {retry_after:?}")]
    Deadline {
        /// When trying again has a chance (HTTP `Retry-After`).
        retry_after: Duration,
    },
}

/// One admission decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted at this clock reading; the caller holds the device until it
    /// calls [`Gate::finish`].
    Admitted {
        /// Admission time, nanoseconds on the gate's [`Clock`].
        at_ns: u64,
    },
    /// Not yet: try again after `ns` nanoseconds.
    Wait {
        /// How long to wait (a hint for [`WaitReason::Busy`]).
        ns: u64,
        /// Why.
        reason: WaitReason,
    },
    /// Never, as asked.
    Refused {
        /// Why.
        reason: Refused,
    },
}

/// The gate's counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Batches admitted.
    pub admitted: u64,
    /// Items in the admitted batches.
    pub admitted_items: u64,
    /// `Wait` answers for the minimum interval.
    pub throttled_interval: u64,
    /// `Wait` answers for the duty cycle.
    pub throttled_duty_cycle: u64,
    /// `Wait` answers because another batch held the device.
    pub throttled_busy: u64,
    /// Batches refused as larger than the largest batch.
    pub refused_batch_too_large: u64,
    /// Empty batches refused.
    pub refused_empty: u64,
    /// [`Gate::admit`] calls that gave up at their deadline.
    pub refused_deadline: u64,
    /// Nanoseconds [`Gate::admit`] callers spent waiting, admitted or not.
    pub waited_ns: u64,
    /// Busy nanoseconds reported by [`Gate::finish`].
    pub busy_ns: u64,
}

impl GateStats {
    /// All `Wait` answers.
    pub fn throttled(&self) -> u64 {
        self.throttled_interval + self.throttled_duty_cycle + self.throttled_busy
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    admitted_items: AtomicU64,
    throttled_interval: AtomicU64,
    throttled_duty_cycle: AtomicU64,
    throttled_busy: AtomicU64,
    refused_batch_too_large: AtomicU64,
    refused_empty: AtomicU64,
    refused_deadline: AtomicU64,
    waited_ns: AtomicU64,
    busy_ns: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

fn saturating_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The admission gate of one device. Share it in an `Arc`.
#[derive(Debug)]
pub struct Gate {
    clock: Clock,
    /// 0 when throttling is off.
    interval_ns: AtomicU64,
    compute_percent: AtomicU32,
    share_percent: AtomicU32,
    max_batch: AtomicU32,
    last_admitted: AtomicU64,
    next_free: AtomicU64,
    /// Tasks in [`Gate::admit`] waiting for the device to be released.
    waiters: AtomicUsize,
    released: Notify,
    counters: Counters,
}

impl Gate {
    /// A gate enforcing `policy`, with a clock starting now.
    pub fn new(policy: &EffectivePolicy) -> Self {
        let gate = Self {
            clock: Clock::new(),
            interval_ns: AtomicU64::new(0),
            compute_percent: AtomicU32::new(100),
            share_percent: AtomicU32::new(100),
            max_batch: AtomicU32::new(1),
            last_admitted: AtomicU64::new(NEVER),
            next_free: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
            counters: Counters::default(),
        };
        gate.update(policy);
        gate
    }

    /// Enforce `policy` from the next decision on. Without adaptive back-off
    /// the share returns to 100%.
    pub fn update(&self, policy: &EffectivePolicy) {
        let interval_ms = if policy.throttle_enabled {
            policy.min_request_interval_ms
        } else {
            0
        };
        self.interval_ns
            .store(u64::from(interval_ms) * 1_000_000, Ordering::Relaxed);
        self.compute_percent
            .store(policy.compute_max_percent.clamp(1, 100), Ordering::Relaxed);
        self.max_batch
            .store(policy.max_batch_size.max(1), Ordering::Relaxed);
        if policy.adaptive.is_none() {
            self.set_share(100);
        }
    }

    /// Set the share of the compute cap in force (from the adaptive
    /// controller), in percent, 1 to 100.
    pub fn set_share(&self, percent: u32) {
        self.share_percent
            .store(percent.clamp(1, 100), Ordering::Relaxed);
    }

    /// The duty-cycle cap in force: the compute cap times the adaptive share,
    /// as a fraction in (0, 1].
    pub fn effective_cap(&self) -> f64 {
        self.cap_ppm() as f64 / PPM as f64
    }

    /// The minimum interval between admissions (zero when throttling is off).
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.load(Ordering::Relaxed))
    }

    /// The largest batch the policy allows.
    pub fn max_batch(&self) -> u32 {
        self.max_batch.load(Ordering::Relaxed)
    }

    /// How many of `n` waiting items the next batch may take.
    pub fn clamp_batch(&self, n: u32) -> u32 {
        n.min(self.max_batch())
    }

    /// The gate's clock; admission timestamps are read from it.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Decide on a batch of `n` items now. On `Admitted` the caller holds the
    /// device and must call [`Gate::finish`]; [`Gate::admit`] does that for
    /// you. Lock-free and allocation-free.
    pub fn try_admit(&self, n: u32) -> Decision {
        let clock = self.clock;
        let decision = self.decide(n, || clock.now_ns());
        self.count(decision, n);
        decision
    }

    /// Report that the admitted batch is done after keeping the device busy
    /// for `busy`; the device then idles as the duty cycle asks. Ignored (and
    /// logged) when no batch holds the device.
    pub fn finish(&self, busy: Duration) {
        self.finish_at(saturating_ns(busy), self.clock.now_ns());
    }

    /// The counters so far.
    pub fn stats(&self) -> GateStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GateStats {
            admitted: get(&c.admitted),
            admitted_items: get(&c.admitted_items),
            throttled_interval: get(&c.throttled_interval),
            throttled_duty_cycle: get(&c.throttled_duty_cycle),
            throttled_busy: get(&c.throttled_busy),
            refused_batch_too_large: get(&c.refused_batch_too_large),
            refused_empty: get(&c.refused_empty),
            refused_deadline: get(&c.refused_deadline),
            waited_ns: get(&c.waited_ns),
            busy_ns: get(&c.busy_ns),
        }
    }

    fn cap_ppm(&self) -> u64 {
        let compute = u64::from(self.compute_percent.load(Ordering::Relaxed));
        let share = u64::from(self.share_percent.load(Ordering::Relaxed));
        // percent * percent is 1e-4; times 100 is parts per million.
        (compute * share * 100).clamp(1, PPM)
    }

    /// The decision at the times `now` reads; `now` is read once before
    /// taking the device and once after, for the timestamp.
    fn decide(&self, n: u32, now: impl Fn() -> u64) -> Decision {
        let max = self.max_batch();
        if n == 0 {
            return refused(Refused::EmptyBatch);
        }
        if n > max {
            return refused(Refused::BatchTooLarge { n, max });
        }
        loop {
            let interval = self.interval_ns.load(Ordering::Relaxed);
            let free = self.next_free.load(Ordering::SeqCst);
            if free == RUNNING {
                return wait(interval.max(BUSY_HINT_NS), WaitReason::Busy);
            }
            let t = now();
            if t < free {
                return wait(free - t, WaitReason::DutyCycle);
            }
            if let Some(ns) = early(self.last_admitted.load(Ordering::Acquire), interval, t) {
                return wait(ns, WaitReason::Interval);
            }
            if self
                .next_free
                .compare_exchange(free, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            // The device is ours: nobody else writes `last_admitted` until we
            // release it, and a clock read now is the admission time.
            let at = now();
            if let Some(ns) = early(self.last_admitted.load(Ordering::Acquire), interval, at) {
                self.release(free);
                return wait(ns, WaitReason::Interval);
            }
            self.last_admitted.store(at, Ordering::Release);
            return Decision::Admitted { at_ns: at };
        }
    }

    fn finish_at(&self, busy_ns: u64, now: u64) {
        let cap = self.cap_ppm();
        let idle = u128::from(busy_ns) * u128::from(PPM - cap) / u128::from(cap);
        let idle = u64::try_from(idle).unwrap_or(u64::MAX);
        let free = now.saturating_add(idle).min(RUNNING - 1);
        if self
            .next_free
            .compare_exchange(RUNNING, free, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            tracing::warn!("finish reported with no admitted batch on the device; ignored");
            return;
        }
        bump(&self.counters.busy_ns, busy_ns);
        self.wake_waiters();
    }

    fn release(&self, next_free: u64) {
        self.next_free.store(next_free, Ordering::SeqCst);
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    fn count(&self, decision: Decision, n: u32) {
        let c = &self.counters;
        match decision {
            Decision::Admitted { .. } => {
                bump(&c.admitted, 1);
                bump(&c.admitted_items, u64::from(n));
            }
            Decision::Wait { reason, .. } => bump(
                match reason {
                    WaitReason::Interval => &c.throttled_interval,
                    WaitReason::DutyCycle => &c.throttled_duty_cycle,
                    WaitReason::Busy => &c.throttled_busy,
                },
                1,
            ),
            Decision::Refused { reason } => match reason {
                Refused::BatchTooLarge { .. } => bump(&c.refused_batch_too_large, 1),
                Refused::EmptyBatch => bump(&c.refused_empty, 1),
                Refused::Deadline { .. } => bump(&c.refused_deadline, 1),
            },
        }
    }
}

/// One gate per device of the node: batches on different GPUs do not wait for
/// each other; each GPU keeps its own interval, duty cycle and batch size
/// (the policy in force, the same for all).
#[derive(Debug)]
pub struct Gates {
    gates: Vec<(crate::policy::ledger::Device, Arc<Gate>)>,
}

impl Gates {
    /// A gate for each of `devices` (and the CPU device, where CPU-only
    /// pipelines run), all under `policy`.
    pub fn new(
        devices: impl IntoIterator<Item = crate::policy::ledger::Device>,
        policy: &EffectivePolicy,
    ) -> Self {
        let mut gates: Vec<(crate::policy::ledger::Device, Arc<Gate>)> = Vec::new();
        for d in devices
            .into_iter()
            .chain([crate::policy::ledger::Device::Cpu])
        {
            if !gates.iter().any(|(known, _)| *known == d) {
                gates.push((d, Arc::new(Gate::new(policy))));
            }
        }
        Self { gates }
    }

    /// The gate of `device` (the CPU's for a device the node does not have).
    pub fn get(&self, device: crate::policy::ledger::Device) -> &Arc<Gate> {
        let cpu = self
            .gates
            .iter()
            .find(|(d, _)| *d == crate::policy::ledger::Device::Cpu);
        self.gates
            .iter()
            .find(|(d, _)| *d == device)
            .or(cpu)
            .map(|(_, g)| g)
            .unwrap_or_else(|| &self.gates[0].1)
    }

    /// Every device with its gate.
    pub fn iter(&self) -> impl Iterator<Item = &(crate::policy::ledger::Device, Arc<Gate>)> {
        self.gates.iter()
    }

    /// The policy in force, to every gate.
    pub fn update(&self, policy: &EffectivePolicy) {
        for (_, g) in &self.gates {
            g.update(policy);
        }
    }

    /// The adaptive share, to every gate.
    pub fn set_share(&self, percent: u32) {
        for (_, g) in &self.gates {
            g.set_share(percent);
        }
    }
}

/// How long before `now` reaches `last + interval`, if it has not.
fn early(last: u64, interval: u64, now: u64) -> Option<u64> {
    if last == NEVER {
        return None;
    }
    let ready = last.saturating_add(interval);
    (now < ready).then(|| ready - now)
}

fn wait(ns: u64, reason: WaitReason) -> Decision {
    Decision::Wait { ns, reason }
}

fn refused(reason: Refused) -> Decision {
    Decision::Refused { reason }
}

#[cfg(test)]
mod tests;
