//! Process priority read back from the kernel: on a dedicated thread, and on
//! a whole process in a child so that the test process keeps its priority.

use std::process::Command;
use std::sync::{Arc, Barrier};

use gogrid_agent::policy::priority::{
    self, IoPriority, Setting, Settings, Tid, apply, apply_to_threads, current_thread_id, io_of,
    lower_nice, nice_of, set_io, thread_ids,
};
use gogrid_crds::Preset;
use gogrid_crds::policy::preset_policy;

const CHILD: &str = "GOGRID_PRIORITY_TEST_CHILD";

/// Field 19 of `/proc/self/task/<tid>/stat`, the nice the scheduler uses.
fn stat_nice(tid: Tid) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    // Field 2 (the name) is in parentheses and may hold spaces: count after it.
    let (_, rest) = stat.rsplit_once(')').expect("stat has a name");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[19 - 3].parse().expect("nice is a number")
}

#[test]
fn a_thread_is_lowered_read_back_from_the_kernel_and_never_raised_again() {
    let main_tid = current_thread_id().expect("tid");
    let main_nice = nice_of(main_tid).expect("nice");
    std::thread::spawn(move || {
        let tid = current_thread_id().expect("tid");
        let base = nice_of(tid).expect("nice");
        assert!(base < 19, "the test needs room to lower the nice");
        let lower = (base + 5).min(19);

        let report = apply_to_threads(
            Settings {
                nice: lower,
                io: IoPriority::Idle,
            },
            &[tid],
        );
        assert_eq!(report.threads, 1);
        assert!(
            matches!(report.nice, Setting::Applied(n) if n == lower),
            "{:?}",
            report.nice
        );
        assert!(
            matches!(report.io, Setting::Applied(IoPriority::Idle)),
            "{:?}",
            report.io
        );
        assert_eq!(nice_of(tid).expect("nice"), lower);
        assert_eq!(stat_nice(tid), lower);
        assert_eq!(io_of(tid).expect("ioprio"), Some(IoPriority::Idle));

        let kept = lower_nice(tid, base);
        assert!(
            matches!(kept, Setting::Kept { current, asked } if current == lower && asked == base),
            "{kept:?}"
        );
        assert_eq!(stat_nice(tid), lower, "raising is never attempted");

        assert!(matches!(
            set_io(tid, IoPriority::BestEffort(6)),
            Setting::Applied(_)
        ));
        assert_eq!(io_of(tid).expect("ioprio"), Some(IoPriority::BestEffort(6)));
    })
    .join()
    .expect("the lowered thread's checks");
    assert_eq!(
        nice_of(main_tid).expect("nice"),
        main_nice,
        "other threads untouched"
    );
}

#[test]
fn the_policy_lowers_every_thread_of_the_process_and_later_threads_inherit_it() {
    if std::env::var_os(CHILD).is_some() {
        in_the_child();
        return;
    }
    let me = std::env::current_exe().expect("test binary");
    let out = Command::new(me)
        .args([
            "--exact",
            "the_policy_lowers_every_thread_of_the_process_and_later_threads_inherit_it",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_the_child() {
    let base = nice_of(current_thread_id().expect("tid")).expect("nice");
    let mut policy = preset_policy(Preset::Conservative);
    policy.nice = (base + 4).min(19);

    let parked = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let parked = Arc::clone(&parked);
            std::thread::spawn(move || {
                parked.wait();
                parked.wait();
            })
        })
        .collect();
    parked.wait();

    let report = apply(&policy);
    assert!(
        report.threads >= 4,
        "harness, test and 3 parked threads: {report:?}"
    );
    assert!(matches!(report.nice, Setting::Applied(_)), "{report:?}");
    assert!(
        matches!(report.io, Setting::Applied(IoPriority::Idle)),
        "{report:?}"
    );
    for tid in thread_ids().expect("threads") {
        assert_eq!(stat_nice(tid), policy.nice, "thread {tid}");
        assert_eq!(
            io_of(tid).expect("ioprio"),
            Some(IoPriority::Idle),
            "thread {tid}"
        );
    }
    let nice = policy.nice;
    std::thread::spawn(move || {
        let tid = current_thread_id().expect("tid");
        assert_eq!(priority::nice_of(tid).expect("nice"), nice, "inherited");
        assert_eq!(
            io_of(tid).expect("ioprio"),
            Some(IoPriority::Idle),
            "inherited"
        );
    })
    .join()
    .expect("a later thread inherits");

    policy.nice = base;
    let report = apply(&policy);
    assert!(matches!(report.nice, Setting::Kept { .. }), "{report:?}");
    parked.wait();
    for t in threads {
        t.join().expect("parked thread");
    }
}
