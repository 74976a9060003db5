//! Unit tests of the admission gate, on a simulated clock where timing matters.

use super::*;
use gogrid_crds::Preset;
use gogrid_crds::policy::preset_policy;
use std::sync::Arc;

const MS: u64 = 1_000_000;

fn policy(interval_ms: u32, compute: u32, max_batch: u32) -> EffectivePolicy {
    let mut p = preset_policy(Preset::Aggressive);
    p.throttle_enabled = interval_ms > 0;
    p.min_request_interval_ms = interval_ms;
    p.compute_max_percent = compute;
    p.max_batch_size = max_batch;
    p
}

/// Admit at simulated time `t` and end the batch at once with `busy_ns`.
fn run_at(gate: &Gate, t: u64, busy_ns: u64) -> Decision {
    let d = gate.decide(1, || t);
    if matches!(d, Decision::Admitted { .. }) {
        gate.finish_at(busy_ns, t);
    }
    d
}

#[test]
fn no_two_admissions_are_closer_than_the_interval() {
    let gate = Gate::new(&policy(10, 100, 4));
    assert_eq!(
        run_at(&gate, 5 * MS, 0),
        Decision::Admitted { at_ns: 5 * MS }
    );
    assert_eq!(
        run_at(&gate, 15 * MS - 1, 0),
        Decision::Wait {
            ns: 1,
            reason: WaitReason::Interval
        }
    );
    assert_eq!(
        run_at(&gate, 15 * MS, 0),
        Decision::Admitted { at_ns: 15 * MS }
    );
}

#[test]
fn after_a_batch_the_device_idles_so_the_duty_cycle_stays_under_the_cap() {
    let gate = Gate::new(&policy(0, 60, 4));
    assert!(matches!(gate.decide(1, || 0), Decision::Admitted { .. }));
    // Busy 6 ms under a 60% cap: idle 6 * 0.4 / 0.6 = 4 ms after the end.
    gate.finish_at(6 * MS, 6 * MS);
    assert_eq!(
        gate.decide(1, || 10 * MS - 1),
        Decision::Wait {
            ns: 1,
            reason: WaitReason::DutyCycle
        }
    );
    assert_eq!(
        gate.decide(1, || 10 * MS),
        Decision::Admitted { at_ns: 10 * MS }
    );
}

#[test]
fn the_adaptive_share_scales_the_compute_cap() {
    let gate = Gate::new(&policy(0, 60, 4));
    gate.set_share(50);
    assert!((gate.effective_cap() - 0.3).abs() < 1e-9);
    assert!(matches!(
        run_at(&gate, 0, 3 * MS),
        Decision::Admitted { .. }
    ));
    // 30%: idle 3 * 0.7 / 0.3 = 7 ms.
    assert_eq!(
        gate.decide(1, || 7 * MS - 1),
        Decision::Wait {
            ns: 1,
            reason: WaitReason::DutyCycle
        }
    );
    gate.set_share(0);
    assert!(
        (gate.effective_cap() - 0.006).abs() < 1e-9,
        "share is at least 1%"
    );
}

#[test]
fn only_one_batch_holds_the_device_until_it_finishes() {
    let gate = Gate::new(&policy(0, 100, 4));
    assert!(matches!(gate.decide(2, || 0), Decision::Admitted { .. }));
    assert!(matches!(
        gate.decide(1, || MS),
        Decision::Wait {
            reason: WaitReason::Busy,
            ..
        }
    ));
    gate.finish_at(MS, MS);
    assert_eq!(gate.decide(1, || MS), Decision::Admitted { at_ns: MS });
}

#[test]
fn a_finish_without_an_admitted_batch_changes_nothing() {
    let gate = Gate::new(&policy(0, 10, 4));
    gate.finish_at(100 * MS, 0);
    assert_eq!(gate.decide(1, || 0), Decision::Admitted { at_ns: 0 });
    assert_eq!(gate.stats().busy_ns, 0);
}

#[test]
fn batches_larger_than_the_policy_allows_are_refused_and_the_batcher_is_told_how_many_to_take() {
    let gate = Gate::new(&policy(0, 100, 4));
    assert_eq!(gate.clamp_batch(9), 4);
    assert_eq!(gate.clamp_batch(3), 3);
    assert_eq!(
        gate.try_admit(5),
        Decision::Refused {
            reason: Refused::BatchTooLarge { n: 5, max: 4 }
        }
    );
    assert_eq!(
        gate.try_admit(0),
        Decision::Refused {
            reason: Refused::EmptyBatch
        }
    );
    assert!(matches!(gate.try_admit(4), Decision::Admitted { .. }));
}

#[test]
fn a_policy_update_applies_to_the_next_decision() {
    let gate = Gate::new(&policy(100, 100, 2));
    assert!(matches!(run_at(&gate, 0, 0), Decision::Admitted { .. }));
    assert!(matches!(run_at(&gate, 20 * MS, 0), Decision::Wait { .. }));
    gate.update(&policy(10, 100, 8));
    assert_eq!(gate.interval(), Duration::from_millis(10));
    assert_eq!(gate.max_batch(), 8);
    assert!(matches!(
        run_at(&gate, 20 * MS, 0),
        Decision::Admitted { .. }
    ));

    let mut off = policy(50, 100, 8);
    off.throttle_enabled = false;
    gate.update(&off);
    assert_eq!(gate.interval(), Duration::ZERO);
    assert!(matches!(
        run_at(&gate, 20 * MS, 0),
        Decision::Admitted { .. }
    ));
}

#[test]
fn a_policy_without_adaptive_back_off_restores_the_full_share() {
    let gate = Gate::new(&policy(0, 80, 2));
    gate.set_share(25);
    assert!((gate.effective_cap() - 0.2).abs() < 1e-9);
    gate.update(&policy(0, 80, 2));
    assert!((gate.effective_cap() - 0.8).abs() < 1e-9);
}

#[test]
fn each_outcome_is_counted_under_its_reason() {
    let gate = Gate::new(&policy(1_000_000, 100, 2));
    assert!(matches!(gate.try_admit(1), Decision::Admitted { .. }));
    assert!(matches!(gate.try_admit(1), Decision::Wait { .. }));
    gate.finish(Duration::from_nanos(7));
    assert!(matches!(gate.try_admit(1), Decision::Wait { .. }));
    assert!(matches!(gate.try_admit(3), Decision::Refused { .. }));
    let s = gate.stats();
    assert_eq!((s.admitted, s.admitted_items), (1, 1));
    assert_eq!((s.throttled_busy, s.throttled_interval), (1, 1));
    assert_eq!((s.throttled(), s.refused_batch_too_large), (2, 1));
    assert_eq!(s.busy_ns, 7);
}

#[tokio::test]
async fn a_wait_past_the_deadline_is_refused_at_once_with_a_retry_after() {
    let gate = Arc::new(Gate::new(&policy(60_000, 100, 2)));
    let first = gate
        .admit(1, Instant::now() + Duration::from_secs(1))
        .await
        .expect("first is admitted");
    first.finish(Duration::ZERO);
    let err = gate
        .admit(1, Instant::now() + Duration::from_secs(1))
        .await
        .expect_err("the interval is a minute");
    let Refused::Deadline { retry_after } = err else {
        panic!("expected a deadline refusal, got {err:?}");
    };
    assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
    assert_eq!(gate.stats().refused_deadline, 1);
}

#[tokio::test]
async fn a_caller_waiting_on_a_busy_device_is_admitted_when_the_permit_is_dropped() {
    let gate = Arc::new(Gate::new(&policy(0, 100, 2)));
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = gate.admit(1, deadline).await.expect("device free");
    let waiter = {
        let gate = Arc::clone(&gate);
        tokio::spawn(async move { gate.admit(2, deadline).await.map(|p| p.at_ns()) })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "the device is held");
    let held_at = held.at_ns();
    drop(held);
    let at = waiter.await.expect("task").expect("admitted");
    assert!(at >= held_at);
    assert_eq!(gate.stats().admitted, 2);
}

#[test]
fn a_blocking_caller_is_spaced_by_the_interval_and_refused_past_its_deadline() {
    let gate = Arc::new(Gate::new(&policy(5, 100, 2)));
    let far = Instant::now() + Duration::from_secs(60);
    let first = gate.admit_blocking(1, far).expect("admitted");
    let at = first.at_ns();
    first.finish(Duration::ZERO);
    let second = gate
        .admit_blocking(1, far)
        .expect("admitted after the interval");
    assert!(second.at_ns() >= at + 5 * MS);
    let busy = gate.admit_blocking(1, Instant::now());
    assert!(matches!(busy, Err(Refused::Deadline { .. })), "{busy:?}");
    drop(second);
    let s = gate.stats();
    assert_eq!((s.admitted, s.refused_deadline), (2, 1));
}
