//! The duty cycle the gate achieves: 1 ms units of CPU work run through the
//! gate under caps of 30, 60 and 90%, and busy / (busy + idle) measured on the
//! wall clock between the first and the last admission. Once through the async
//! `Gate::admit` (tokio's timer rounds sleeps up to the millisecond), once
//! through `Gate::admit_blocking` (the OS timer).
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gogrid_agent::policy::throttle::Gate;
use gogrid_crds::Preset;
use gogrid_crds::policy::preset_policy;

const UNIT: Duration = Duration::from_millis(1);

/// Keep the CPU busy for `d` of wall-clock time.
fn spin(d: Duration) {
    let started = Instant::now();
    while started.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// How a unit waits for admission.
#[derive(Clone, Copy)]
enum Path {
    Async,
    Blocking,
}

/// Run units for about `length`; returns the measured busy fraction.
fn run(gate: &Arc<Gate>, path: Path, length: Duration) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let admit = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        match path {
            Path::Async => runtime.block_on(gate.admit(1, deadline)),
            Path::Blocking => gate.admit_blocking(1, deadline),
        }
        .expect("admitted")
    };
    let mut busy = Duration::ZERO;
    let mut permit = admit();
    let start = gate.clock().instant(permit.at_ns());
    loop {
        let began = Instant::now();
        spin(UNIT);
        let b = began.elapsed();
        busy += b;
        permit.finish(b);
        // The next admission closes the window, idle time owed included.
        permit = admit();
        let wall = gate.clock().instant(permit.at_ns()) - start;
        if wall >= length {
            return busy.as_secs_f64() / wall.as_secs_f64();
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let length = if full {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(50)
    };
    println!("units of {UNIT:?}, {length:?} per run");
    println!("cap, measured busy fraction (async admit), measured busy fraction (blocking admit)");
    for cap in [30, 60, 90] {
        let mut policy = preset_policy(Preset::Aggressive);
        policy.compute_max_percent = cap;
        let gate = Arc::new(Gate::new(&policy));
        let async_fraction = run(&gate, Path::Async, length);
        let gate = Arc::new(Gate::new(&policy));
        let blocking_fraction = run(&gate, Path::Blocking, length);
        println!("{cap}%, {async_fraction:.3}, {blocking_fraction:.3}");
    }
}
