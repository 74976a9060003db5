//! The admission gate under real concurrency: many tasks on a multi-threaded
//! runtime, checked only on what the gate itself guarantees (spacing of the
//! timestamps it returns, counts), never on how long the test took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gogrid_agent::policy::throttle::{Decision, Gate};
use gogrid_crds::Preset;
use gogrid_crds::policy::{EffectivePolicy, preset_policy};

const TASKS: usize = 200;

fn policy(interval_ms: u32, compute: u32) -> EffectivePolicy {
    let mut p = preset_policy(Preset::Aggressive);
    p.throttle_enabled = interval_ms > 0;
    p.min_request_interval_ms = interval_ms;
    p.compute_max_percent = compute;
    p.max_batch_size = 1;
    p
}

fn assert_spaced(mut admitted: Vec<u64>, interval: Duration) {
    admitted.sort_unstable();
    let interval = u64::try_from(interval.as_nanos()).expect("small");
    for pair in admitted.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval,
            "admissions at {} and {} ns are closer than {interval} ns",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_racing_tasks_are_all_admitted_at_least_the_interval_apart() {
    let gate = Arc::new(Gate::new(&policy(2, 100)));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let mut waits = 0u64;
                loop {
                    match gate.try_admit(1) {
                        Decision::Admitted { at_ns } => {
                            gate.finish(Duration::ZERO);
                            return (at_ns, waits);
                        }
                        Decision::Wait { ns, .. } => {
                            waits += 1;
                            tokio::time::sleep(Duration::from_nanos(ns)).await;
                        }
                        Decision::Refused { reason } => panic!("refused: {reason}"),
                    }
                }
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut waits = 0;
    for task in tasks {
        let (at, w) = task.await.expect("task");
        admitted.push(at);
        waits += w;
    }
    assert_eq!(admitted.len(), TASKS);
    assert_spaced(admitted, gate.interval());
    let stats = gate.stats();
    assert_eq!(stats.admitted, TASKS as u64);
    assert_eq!(stats.throttled(), waits, "one count per Wait answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admit_spaces_racing_tasks_by_the_interval_and_refuses_none_before_a_far_deadline() {
    let gate = Arc::new(Gate::new(&policy(3, 100)));
    let deadline = Instant::now() + Duration::from_secs(600);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit(1, deadline).await.map(|p| p.at_ns()) })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.push(
            task.await
                .expect("task")
                .expect("admitted before the deadline"),
        );
    }
    assert_spaced(admitted, gate.interval());
    let stats = gate.stats();
    assert_eq!((stats.admitted, stats.refused_deadline), (TASKS as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_batch_starts_before_the_previous_one_has_idled_for_its_duty_cycle() {
    // 25% cap: a batch reported busy for 1 ms owes 3 ms of idle.
    let gate = Arc::new(Gate::new(&policy(0, 25)));
    let busy = Duration::from_millis(1);
    let idle_ns = 3_000_000;
    let deadline = Instant::now() + Duration::from_secs(600);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let permit = gate.admit(1, deadline).await.expect("admitted");
                let at = permit.at_ns();
                // Read before finishing: the gate's own end time is later.
                let ended = gate.clock().now_ns();
                permit.finish(busy);
                (at, ended)
            })
        })
        .collect();
    let mut batches = Vec::new();
    for task in tasks {
        batches.push(task.await.expect("task"));
    }
    batches.sort_unstable();
    for pair in batches.windows(2) {
        let ((_, ended), (next, _)) = (pair[0], pair[1]);
        assert!(
            next >= ended + idle_ns,
            "batch at {next} ns started {} ns after the previous end",
            next - ended
        );
    }
    assert_eq!(gate.stats().busy_ns, 50 * 1_000_000);
}
