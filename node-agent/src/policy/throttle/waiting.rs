//! Waiting for admission: the async and blocking loops over
//! [`Gate::try_admit`], and the [`Permit`] that ends the batch.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Gate, RUNNING, Refused, WaitReason, bump, saturating_ns};

/// What a waiting caller does next.
enum Step {
    Admitted(u64),
    Refused(Refused),
    /// Sleep this long, then ask again.
    Sleep(Duration),
    /// The device is busy: wait for its release; the duration is the hint.
    AwaitRelease(Duration),
}

impl Gate {
    /// Wait until a batch of `n` is admitted or `deadline` would pass, sleeping
    /// through interval and duty-cycle waits and waking on the device's release
    /// when it is busy. A wait that would end past the deadline is refused at
    /// once, with its length as `retry_after`.
    ///
    /// Sleeps use tokio's timer, which rounds up to the millisecond: idle
    /// times shorter than that are overshot, so the device stays further under
    /// its cap. An executor running batches on a blocking thread gets finer
    /// spacing from [`Gate::admit_blocking`].
    pub async fn admit(self: &Arc<Self>, n: u32, deadline: Instant) -> Result<Permit, Refused> {
        let started = Instant::now();
        let outcome = loop {
            match self.step(n, deadline) {
                Step::Admitted(at_ns) => break Ok(at_ns),
                Step::Refused(reason) => break Err(reason),
                Step::Sleep(wait) => tokio::time::sleep(wait).await,
                Step::AwaitRelease(hint) => {
                    if !self.wait_for_release(deadline).await {
                        break Err(Refused::Deadline { retry_after: hint });
                    }
                }
            }
        };
        self.settle(outcome, started)
    }

    /// [`Gate::admit`] for a blocking thread: sleeps with the OS timer (tens of
    /// microseconds of slack) and polls a busy device at the hinted interval.
    pub fn admit_blocking(self: &Arc<Self>, n: u32, deadline: Instant) -> Result<Permit, Refused> {
        let started = Instant::now();
        let outcome = loop {
            match self.step(n, deadline) {
                Step::Admitted(at_ns) => break Ok(at_ns),
                Step::Refused(reason) => break Err(reason),
                Step::Sleep(wait) => std::thread::sleep(wait),
                Step::AwaitRelease(hint) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Err(Refused::Deadline { retry_after: hint });
                    }
                    std::thread::sleep(hint.min(left));
                }
            }
        };
        self.settle(outcome, started)
    }

    fn step(&self, n: u32, deadline: Instant) -> Step {
        match self.try_admit(n) {
            Decision::Admitted { at_ns } => Step::Admitted(at_ns),
            Decision::Refused { reason } => Step::Refused(reason),
            Decision::Wait { ns, reason } => {
                let wait = Duration::from_nanos(ns);
                if reason == WaitReason::Busy {
                    Step::AwaitRelease(wait)
                } else if Instant::now() + wait > deadline {
                    Step::Refused(Refused::Deadline { retry_after: wait })
                } else {
                    Step::Sleep(wait)
                }
            }
        }
    }

    /// Count the wait and its outcome, and wrap an admission in its permit.
    fn settle(
        self: &Arc<Self>,
        outcome: Result<u64, Refused>,
        started: Instant,
    ) -> Result<Permit, Refused> {
        bump(&self.counters.waited_ns, saturating_ns(started.elapsed()));
        if let Err(Refused::Deadline { .. }) = outcome {
            bump(&self.counters.refused_deadline, 1);
        }
        outcome.map(|at_ns| Permit {
            gate: Arc::clone(self),
            at_ns,
            finished: false,
        })
    }

    /// Waits until the device is released; false if `deadline` came first.
    async fn wait_for_release(&self, deadline: Instant) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        let mut released = pin!(self.released.notified());
        released.as_mut().enable();
        // Released between the decision and the registration: no need to wait.
        if self.next_free.load(Ordering::SeqCst) != RUNNING {
            return true;
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::time::timeout_at(deadline, released).await.is_ok()
    }
}

/// Counts a task in `Gate::waiters` for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An admitted batch holding its device. Dropping it reports the time since
/// admission as busy; [`Permit::finish`] reports a measured busy time instead.
#[must_use = "dropping a permit ends the batch at once"]
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    at_ns: u64,
    finished: bool,
}

impl Permit {
    /// Admission time, nanoseconds on the gate's clock.
    pub fn at_ns(&self) -> u64 {
        self.at_ns
    }

    /// End the batch, which kept the device busy for `busy`.
    pub fn finish(mut self, busy: Duration) {
        self.finished = true;
        self.gate.finish(busy);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            let now = self.gate.clock.now_ns();
            self.gate.finish_at(now.saturating_sub(self.at_ns), now);
        }
    }
}
