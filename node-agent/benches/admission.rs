//! Cost of the request-path checks: a VRAM ledger reservation and release,
//! and the admission gate's decision on its admitted and wait paths.
//!
//! Criterion reports mean and median; the p99 is computed here: 1000 batches
//! of 1000 calls each are timed, and the 99th percentile of the per-call
//! batch means is printed as `admission p99 = X ns` (one call is too short to
//! time alone: the clock read costs as much as the call). Batches during which
//! the thread was preempted are left out of that figure, since a lost time
//! slice says nothing about the check; the p99 over all batches follows it.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gogrid_agent::policy::ledger::{Device, Ledger, Use};
use gogrid_agent::policy::throttle::{Decision, Gate};
use gogrid_crds::Preset;
use gogrid_crds::policy::{EffectivePolicy, preset_policy};

fn policy(interval_ms: u32) -> EffectivePolicy {
    let mut p = preset_policy(Preset::Aggressive);
    p.throttle_enabled = interval_ms > 0;
    p.min_request_interval_ms = interval_ms;
    p.compute_max_percent = 100;
    p
}

fn ledger() -> Arc<Ledger> {
    Arc::new(Ledger::new([
        (Device::Gpu(0), 24 << 30),
        (Device::Gpu(1), 16 << 30),
    ]))
}

/// A gate that admits every call: no interval, a 100% cap.
fn open_gate() -> Gate {
    Gate::new(&policy(0))
}

/// A gate that answers `Wait` to every call: an hour's interval, one admitted.
fn closed_gate() -> Gate {
    let gate = Gate::new(&policy(3_600_000));
    assert!(matches!(gate.try_admit(1), Decision::Admitted { .. }));
    gate.finish(Duration::ZERO);
    gate
}

fn reserve_and_release(ledger: &Arc<Ledger>) {
    let r = ledger.try_reserve(Device::Gpu(1), black_box(64 << 20), Use::Activations);
    drop(black_box(r));
}

fn admit_and_finish(gate: &Gate) {
    if let Decision::Admitted { .. } = black_box(gate.try_admit(black_box(1))) {
        gate.finish(Duration::ZERO);
    }
}

fn wait_answer(gate: &Gate) {
    black_box(gate.try_admit(black_box(1)));
}

fn with_criterion(c: &mut Criterion) {
    let l = ledger();
    c.bench_function("ledger try_reserve + release", |b| {
        b.iter(|| reserve_and_release(&l))
    });
    let open = open_gate();
    c.bench_function("gate admitted (try_admit + finish)", |b| {
        b.iter(|| admit_and_finish(&open))
    });
    let closed = closed_gate();
    c.bench_function("gate wait (interval)", |b| b.iter(|| wait_answer(&closed)));
}

/// Involuntary context switches of the calling thread so far, from
/// `/proc/thread-self/status` (0 where it cannot be read).
fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The value at quantile `q` of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The 99th percentile of per-call means over `batches` batches of `batch`,
/// over the batches the scheduler did not interrupt (a time slice lost to
/// another process inflates a whole batch's mean by milliseconds / batch)
/// and over all of them.
fn p99(name: &str, batches: usize, batch: u32, mut call: impl FnMut()) {
    for _ in 0..batch * 10 {
        call();
    }
    let mut all = Vec::with_capacity(batches);
    let mut quiet = Vec::with_capacity(batches);
    for _ in 0..batches {
        let before = preemptions();
        let started = Instant::now();
        for _ in 0..batch {
            call();
        }
        let mean = started.elapsed().as_nanos() as f64 / f64::from(batch);
        all.push(mean);
        if preemptions() == before {
            quiet.push(mean);
        }
    }
    all.sort_by(f64::total_cmp);
    quiet.sort_by(f64::total_cmp);
    if quiet.is_empty() {
        quiet.clone_from(&all);
    }
    println!(
        "admission p99 = {:.1} ns  [{name}]  (p50 {:.1} ns; {} of {batches} batches of {batch} \
         calls not preempted; p99 of all batches {:.1} ns)",
        quantile(&quiet, 0.99),
        quantile(&quiet, 0.50),
        quiet.len(),
        quantile(&all, 0.99),
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    with_criterion(&mut c);
    c.final_summary();

    // Under `cargo test --benches` a quick pass only checks that it runs.
    let (batches, batch) = if full { (1000, 1000) } else { (10, 10) };
    let l = ledger();
    p99("ledger try_reserve + release", batches, batch, || {
        reserve_and_release(&l)
    });
    let open = open_gate();
    p99("gate admitted: try_admit + finish", batches, batch, || {
        admit_and_finish(&open)
    });
    let closed = closed_gate();
    p99("gate wait: interval", batches, batch, || {
        wait_answer(&closed)
    });
}
