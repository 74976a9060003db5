//! The agent's CPU and I/O priority, set through syscalls (`setpriority`,
//! `ioprio_set`), never by running `renice` or `ionice`.
//!
//! On Linux both are per thread: `setpriority(PRIO_PROCESS, tid)` and
//! `ioprio_set(IOPRIO_WHO_PROCESS, tid)` change one thread, and a new thread
//! starts with its creator's values. So [`apply`] changes every thread listed
//! in `/proc/self/task`, scanning again until a pass finds no new thread; a
//! thread spawned afterwards inherits the lowered values from its creator.
//!
//! Nice only goes down: raising priority needs `CAP_SYS_NICE`, so when the
//! policy asks for a lower nice than a thread has, the thread keeps its value
//! and the report says so (restart the agent to get it back). The I/O class
//! follows the policy both ways, since idle and best-effort need no privilege.
//! Failures are reported and logged, never fatal.

use std::collections::BTreeSet;
use std::fmt;
use std::io;

use gogrid_crds::EffectivePolicy;
use gogrid_crds::resource_profile::IoClass;
use ioprio::{BePriorityLevel, Class, Priority, Target};
use rustix::process::{Pid, getpriority_process, setpriority_process};

/// A Linux thread id.
pub type Tid = i32;

/// How many times [`apply`] lists the threads, looking for new ones.
const SCANS: usize = 4;
const ESRCH: i32 = 3;

/// An I/O priority the agent may take without privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoPriority {
    /// Disk access only when nobody else wants it.
    Idle,
    /// The normal class, at a level from 0 (highest) to 7 (lowest).
    BestEffort(u8),
}

impl IoPriority {
    /// The priority a policy's class and level stand for (levels above 7
    /// count as 7).
    pub fn from_policy(class: IoClass, level: u32) -> Self {
        match class {
            IoClass::Idle => Self::Idle,
            IoClass::BestEffort => Self::BestEffort(u8::try_from(level.min(7)).unwrap_or(7)),
        }
    }

    fn to_ioprio(self) -> Priority {
        Priority::new(match self {
            Self::Idle => Class::Idle,
            Self::BestEffort(level) => Class::BestEffort(
                BePriorityLevel::from_level(level).unwrap_or(BePriorityLevel::lowest()),
            ),
        })
    }
}

impl fmt::Display for IoPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("idle"),
            Self::BestEffort(level) => write!(f, "best-effort {level}"),
        }
    }
}

/// The priorities a policy asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Niceness, 0 to 19.
    pub nice: i32,
    /// I/O class and level.
    pub io: IoPriority,
}

impl Settings {
    /// The settings of `policy`.
    pub fn from_policy(policy: &EffectivePolicy) -> Self {
        Self {
            nice: policy.nice.clamp(0, 19),
            io: IoPriority::from_policy(policy.io_class, policy.io_level),
        }
    }
}

/// What became of one setting.
#[derive(Debug)]
pub enum Setting<T> {
    /// In force now.
    Applied(T),
    /// Left as it was: applying it would raise priority.
    Kept {
        /// The value kept.
        current: T,
        /// The value the policy asked for.
        asked: T,
    },
    /// The syscall failed.
    Failed {
        /// The value the policy asked for.
        asked: T,
        /// Why.
        error: io::Error,
    },
}

impl<T> Setting<T> {
    /// Keep the more telling of two threads' outcomes: a failure over a kept
    /// value over an applied one.
    fn worst(self, other: Self) -> Self {
        let rank = |s: &Self| match s {
            Self::Applied(_) => 0,
            Self::Kept { .. } => 1,
            Self::Failed { .. } => 2,
        };
        if rank(&other) > rank(&self) {
            other
        } else {
            self
        }
    }

    /// Whether the setting failed because the thread has exited.
    fn thread_gone(&self) -> bool {
        matches!(self, Self::Failed { error, .. } if error.raw_os_error() == Some(ESRCH))
    }
}

impl<T: fmt::Display> fmt::Display for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied(v) => write!(f, "{v}"),
            Self::Kept { current, asked } => {
                write!(f, "kept {current}: {asked} would raise priority")
            }
            Self::Failed { asked, error } => write!(f, "{asked} failed: {error}"),
        }
    }
}

/// What [`apply`] did, per setting, over all the threads it changed.
#[derive(Debug)]
pub struct Report {
    /// Threads changed.
    pub threads: usize,
    /// Niceness.
    pub nice: Setting<i32>,
    /// I/O priority.
    pub io: Setting<IoPriority>,
}

/// Apply `policy`'s priorities to every thread of the agent. Logs a warning
/// for each setting not in force.
pub fn apply(policy: &EffectivePolicy) -> Report {
    let settings = Settings::from_policy(policy);
    let mut done = BTreeSet::new();
    let mut report = Report {
        threads: 0,
        nice: Setting::Applied(settings.nice),
        io: Setting::Applied(settings.io),
    };
    for _ in 0..SCANS {
        let tids = match thread_ids() {
            Ok(tids) => tids,
            Err(error) => {
                let failed = || io::Error::new(error.kind(), format!("/proc/self/task: {error}"));
                report.nice = Setting::Failed {
                    asked: settings.nice,
                    error: failed(),
                };
                report.io = Setting::Failed {
                    asked: settings.io,
                    error: failed(),
                };
                break;
            }
        };
        let new: Vec<Tid> = tids.into_iter().filter(|t| done.insert(*t)).collect();
        if new.is_empty() {
            break;
        }
        let pass = apply_to_threads(settings, &new);
        report = Report {
            threads: report.threads + pass.threads,
            nice: report.nice.worst(pass.nice),
            io: report.io.worst(pass.io),
        };
    }
    if !matches!(report.nice, Setting::Applied(_)) {
        tracing::warn!(nice = %report.nice, "process nice not applied as asked");
    }
    if !matches!(report.io, Setting::Applied(_)) {
        tracing::warn!(io = %report.io, "process I/O priority not applied as asked");
    }
    report
}

/// Apply `settings` to the threads `tids`; threads that exited meanwhile are
/// skipped.
pub fn apply_to_threads(settings: Settings, tids: &[Tid]) -> Report {
    let mut report = Report {
        threads: 0,
        nice: Setting::Applied(settings.nice),
        io: Setting::Applied(settings.io),
    };
    for &tid in tids {
        let nice = lower_nice(tid, settings.nice);
        let io = set_io(tid, settings.io);
        if nice.thread_gone() || io.thread_gone() {
            continue;
        }
        report.threads += 1;
        report.nice = report.nice.worst(nice);
        report.io = report.io.worst(io);
    }
    report
}

/// Set thread `tid`'s nice to `nice` unless that would raise its priority.
pub fn lower_nice(tid: Tid, nice: i32) -> Setting<i32> {
    let current = match nice_of(tid) {
        Ok(current) => current,
        Err(error) => return Setting::Failed { asked: nice, error },
    };
    if nice < current {
        return Setting::Kept {
            current,
            asked: nice,
        };
    }
    match setpriority_process(pid(tid), nice) {
        Ok(()) => Setting::Applied(nice),
        Err(errno) => Setting::Failed {
            asked: nice,
            error: errno.into(),
        },
    }
}

/// Set thread `tid`'s I/O priority.
pub fn set_io(tid: Tid, io: IoPriority) -> Setting<IoPriority> {
    match ioprio::set_priority(io_target(tid), io.to_ioprio()) {
        Ok(()) => Setting::Applied(io),
        Err(e) => Setting::Failed {
            asked: io,
            error: e
                .as_errno()
                .map_or_else(|| io::Error::other(e.to_string()), io::Error::from),
        },
    }
}

/// Thread `tid`'s nice, from `getpriority`.
pub fn nice_of(tid: Tid) -> io::Result<i32> {
    Ok(getpriority_process(pid(tid))?)
}

/// Thread `tid`'s I/O priority, from `ioprio_get`; `None` when it has no
/// class of its own (it follows its nice) or a real-time one.
pub fn io_of(tid: Tid) -> io::Result<Option<IoPriority>> {
    let prio = ioprio::get_priority(io_target(tid)).map_err(|e| {
        e.as_errno()
            .map_or_else(|| io::Error::other(e.to_string()), io::Error::from)
    })?;
    Ok(match prio.class() {
        Some(Class::Idle) => Some(IoPriority::Idle),
        Some(Class::BestEffort(level)) => Some(IoPriority::BestEffort(level.level())),
        Some(Class::Realtime(_)) | None => None,
    })
}

/// The ids of the process's threads, from `/proc/self/task`.
pub fn thread_ids() -> io::Result<Vec<Tid>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The calling thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
pub fn current_thread_id() -> io::Result<Tid> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/thread-self points to {}", link.display()),
            )
        })
}

/// `None` (the calling thread) for a non-positive id.
fn pid(tid: Tid) -> Option<Pid> {
    Pid::from_raw(tid.max(0))
}

fn io_target(tid: Tid) -> Target {
    Target::Process(ioprio::Pid::from_raw(tid.max(0)))
}

/// The `ProcessPriority` condition of the node's GpuNode for `report`: false
/// with the errors when a syscall failed (the agent keeps running).
pub fn condition(report: &Report) -> gogrid_crds::conditions::Desired {
    use gogrid_crds::conditions::Desired;
    fn part<T: fmt::Display>(what: &str, s: &Setting<T>) -> (bool, String) {
        match s {
            Setting::Applied(v) => (true, format!("{what} {v}")),
            Setting::Kept { current, asked } => (
                true,
                format!("{what} kept at {current} ({asked} would raise priority)"),
            ),
            Setting::Failed { asked, error } => (false, format!("{what} {asked} failed: {error}")),
        }
    }
    let (nice_ok, nice) = part("nice", &report.nice);
    let (io_ok, io) = part("I/O", &report.io);
    let message = format!("{nice}; {io}; {} threads", report.threads);
    if nice_ok && io_ok {
        Desired::yes(PRIORITY_CONDITION, "Applied", message)
    } else {
        Desired::no(PRIORITY_CONDITION, "SyscallFailed", message)
    }
}

/// Type of the GpuNode condition that reports the process priority.
pub const PRIORITY_CONDITION: &str = "ProcessPriority";

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::Preset;
    use gogrid_crds::policy::preset_policy;

    #[test]
    fn the_settings_are_those_of_the_policy() {
        let s = Settings::from_policy(&preset_policy(Preset::Conservative));
        assert_eq!(
            s,
            Settings {
                nice: 15,
                io: IoPriority::Idle
            }
        );
        let s = Settings::from_policy(&preset_policy(Preset::Aggressive));
        assert_eq!(
            s,
            Settings {
                nice: 0,
                io: IoPriority::BestEffort(4)
            }
        );
        assert_eq!(
            IoPriority::from_policy(IoClass::BestEffort, 12),
            IoPriority::BestEffort(7)
        );
    }

    #[test]
    fn a_failure_outranks_a_kept_value_which_outranks_an_applied_one() {
        let failed = || Setting::Failed {
            asked: 3,
            error: io::Error::other("no"),
        };
        let kept = || Setting::Kept {
            current: 9,
            asked: 3,
        };
        assert!(matches!(
            Setting::Applied(3).worst(kept()),
            Setting::Kept { .. }
        ));
        assert!(matches!(
            kept().worst(Setting::Applied(3)),
            Setting::Kept { .. }
        ));
        assert!(matches!(kept().worst(failed()), Setting::Failed { .. }));
        assert_eq!(kept().to_string(), "kept 9: 3 would raise priority");
    }

    #[test]
    fn the_current_thread_is_among_the_threads_of_the_process() {
        let me = current_thread_id().expect("/proc/thread-self");
        assert!(thread_ids().expect("/proc/self/task").contains(&me));
        assert_ne!(me, 0);
    }

    #[test]
    fn a_failed_syscall_makes_the_condition_false_and_names_the_error() {
        let report = Report {
            threads: 3,
            nice: Setting::Applied(10),
            io: Setting::Failed {
                asked: IoPriority::Idle,
                error: io::Error::from_raw_os_error(1),
            },
        };
        let c = condition(&report);
        assert!(!c.status);
        assert!(
            c.message.contains("I/O") && c.message.contains("nice 10"),
            "{}",
            c.message
        );
        let ok = Report {
            threads: 3,
            nice: Setting::Kept {
                current: 15,
                asked: 10,
            },
            io: Setting::Applied(IoPriority::Idle),
        };
        assert!(condition(&ok).status);
    }
}
