//! Adaptive back-off: the share of the compute cap the agent keeps while
//! other processes use the GPU, and the VRAM they leave it.
//!
//! The controller is pure: it is fed samples (a monotonic time and the other
//! processes' utilisation of the GPU) and answers the share in percent.
//! - A sample above `other_utilization_percent` halves the share, down to
//!   `min_share_percent`, and restarts the quiet period.
//! - After `recovery_seconds` without such a sample the full share returns at
//!   once (the CRD documents the field as "quiet seconds before the full share
//!   returns"); a desktop user who stops gaming gets the GPU back in one step.

use std::time::Duration;

use gogrid_crds::policy::AdaptivePolicy;

const FULL: u32 = 100;

/// The back-off controller of one GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    policy: Option<AdaptivePolicy>,
    share: u32,
    /// Time of the latest sample above the threshold.
    last_busy: Option<Duration>,
}

impl Backoff {
    /// A controller at full share; without a policy it stays there.
    pub fn new(policy: Option<&AdaptivePolicy>) -> Self {
        Self {
            policy: policy.cloned(),
            share: FULL,
            last_busy: None,
        }
    }

    /// Follow a new policy, keeping the state; the share is brought inside the
    /// new bounds, and back to full when back-off is switched off.
    pub fn update(&mut self, policy: Option<&AdaptivePolicy>) {
        self.policy = policy.cloned();
        match &self.policy {
            None => {
                self.share = FULL;
                self.last_busy = None;
            }
            Some(p) => self.share = self.share.max(min_share(p)),
        }
    }

    /// Feed one sample taken at `at` (any monotonic time base) where other
    /// processes used `others_percent` of the GPU; returns the share in force,
    /// in percent.
    pub fn sample(&mut self, at: Duration, others_percent: u32) -> u32 {
        let Some(p) = &self.policy else {
            return FULL;
        };
        if others_percent > p.other_utilization_percent {
            self.share = (self.share / 2).max(min_share(p));
            self.last_busy = Some(at);
        } else if let Some(busy) = self.last_busy {
            let recovery = Duration::from_secs(u64::from(p.recovery_seconds));
            if at.saturating_sub(busy) >= recovery {
                self.share = FULL;
                self.last_busy = None;
            }
        }
        self.share
    }

    /// The share in force, in percent (`min_share_percent` to 100).
    pub fn share(&self) -> u32 {
        self.share
    }
}

fn min_share(p: &AdaptivePolicy) -> u32 {
    p.min_share_percent.clamp(1, FULL)
}

/// The VRAM the agent may use on a GPU: its cap less what other processes
/// hold, never negative.
pub fn vram_left(cap_bytes: i64, others_bytes: i64) -> i64 {
    cap_bytes.saturating_sub(others_bytes.max(0)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdaptivePolicy {
        AdaptivePolicy {
            other_utilization_percent: 10,
            min_share_percent: 20,
            recovery_seconds: 30,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn busy_samples_halve_the_share_down_to_the_minimum() {
        let mut b = Backoff::new(Some(&policy()));
        let shares: Vec<u32> = (0..5).map(|t| b.sample(secs(t), 80)).collect();
        assert_eq!(shares, [50, 25, 20, 20, 20]);
    }

    #[test]
    fn utilisation_at_the_threshold_is_not_busy() {
        let mut b = Backoff::new(Some(&policy()));
        assert_eq!(b.sample(secs(0), 10), 100);
        assert_eq!(b.sample(secs(1), 11), 50);
    }

    #[test]
    fn the_full_share_returns_at_once_after_the_recovery_period_of_quiet() {
        let mut b = Backoff::new(Some(&policy()));
        b.sample(secs(100), 90);
        b.sample(secs(101), 90);
        assert_eq!(b.sample(secs(130), 0), 25, "29 s of quiet is not enough");
        assert_eq!(b.sample(secs(131), 0), 100);
    }

    #[test]
    fn a_busy_sample_during_recovery_restarts_the_quiet_period() {
        let mut b = Backoff::new(Some(&policy()));
        b.sample(secs(0), 90);
        b.sample(secs(20), 90);
        assert_eq!(b.sample(secs(31), 0), 25);
        assert_eq!(b.sample(secs(50), 0), 100);
    }

    #[test]
    fn without_a_policy_the_share_stays_full_and_switching_it_off_restores_it() {
        let mut b = Backoff::new(None);
        assert_eq!(b.sample(secs(0), 100), 100);
        b.update(Some(&policy()));
        assert_eq!(b.sample(secs(1), 100), 50);
        b.update(None);
        assert_eq!(b.share(), 100);
    }

    #[test]
    fn a_raised_minimum_lifts_the_share_at_once() {
        let mut b = Backoff::new(Some(&policy()));
        for t in 0..4 {
            b.sample(secs(t), 90);
        }
        assert_eq!(b.share(), 20);
        b.update(Some(&AdaptivePolicy {
            min_share_percent: 40,
            ..policy()
        }));
        assert_eq!(b.share(), 40);
    }

    #[test]
    fn vram_left_is_the_cap_less_other_processes_and_never_negative() {
        assert_eq!(vram_left(10 << 30, 3 << 30), 7 << 30);
        assert_eq!(vram_left(10 << 30, 12 << 30), 0);
        assert_eq!(vram_left(10 << 30, -1), 10 << 30);
    }
}
