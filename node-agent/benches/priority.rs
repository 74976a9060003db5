//! What the agent's nice buys a foreground task: its throughput while busy
//! "agent" threads compete for the same CPUs at nice 0, then at nice 15.
//!
//! There is one agent thread per CPU the process may use, so the foreground
//! always competes; run under `taskset -c 0` to have one agent thread and the
//! foreground share a single CPU.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gogrid_agent::policy::priority::{Setting, current_thread_id, lower_nice};

/// One unit of CPU work.
fn unit(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Units per second the calling thread gets over `length`.
fn foreground(length: Duration) -> f64 {
    let started = Instant::now();
    let mut units = 0u64;
    let mut x = 1;
    while started.elapsed() < length {
        for _ in 0..100 {
            x = black_box(unit(x));
        }
        units += 100;
    }
    units as f64 / started.elapsed().as_secs_f64()
}

/// Foreground throughput while `agents` busy threads run at `nice`.
fn with_agents(agents: usize, nice: i32, length: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..agents)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                if nice > 0 {
                    let tid = current_thread_id().expect("thread id");
                    let set = lower_nice(tid, nice);
                    assert!(matches!(set, Setting::Applied(_)), "nice {nice}: {set}");
                }
                let mut x = i as u64;
                while !stop.load(Ordering::Relaxed) {
                    x = black_box(unit(x));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let rate = foreground(length);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("agent thread");
    }
    rate
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let length = if full {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(100)
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "foreground units/s (1 unit = 1000 xorshift rounds); {cpus} CPU(s), {cpus} agent thread(s)"
    );
    let alone = foreground(length);
    let at_0 = with_agents(cpus, 0, length);
    let at_15 = with_agents(cpus, 15, length);
    println!("alone:            {alone:>12.0}");
    println!("agent at nice 0:  {at_0:>12.0}");
    println!("agent at nice 15: {at_15:>12.0}");
    println!("ratio nice 15 / nice 0: {:.2}", at_15 / at_0);
}
