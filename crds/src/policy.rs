//! The effective node policy of a ResourceProfile: preset values, then the
//! profile's explicit fields, then the time window in force. One pure function,
//! used by the operator (status) and the agent (enforcement).

use jiff::{Timestamp, ToSpan, Zoned, civil, tz::TimeZone};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource_profile::{IoClass, Preset, ResourceProfileSpec, ScheduleWindow, Weekday};
use crate::validation::FieldError;

/// The policy an agent enforces, fully resolved.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// The preset in force (the window's preset while a window is in force).
    pub preset_in_force: Preset,
    /// Name (or index) of the schedule window in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Share of each GPU's memory the agent may use, in percent.
    pub vram_max_percent: u32,
    /// Duty-cycle cap of each GPU, in percent.
    pub compute_max_percent: u32,
    /// Whether the minimum request interval applies.
    pub throttle_enabled: bool,
    /// Minimum interval between requests on one GPU, in ms (0 when throttling is off).
    pub min_request_interval_ms: u32,
    /// Largest batch.
    pub max_batch_size: u32,
    /// Longest batching delay, in ms.
    pub max_queue_delay_ms: u32,
    /// Niceness of the agent process.
    pub nice: i32,
    /// I/O scheduling class.
    pub io_class: IoClass,
    /// I/O priority level.
    pub io_level: u32,
    /// Adaptive back-off, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptivePolicy>,
}

/// Resolved adaptive back-off settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdaptivePolicy {
    /// Outside utilisation that triggers back-off, in percent.
    pub other_utilization_percent: u32,
    /// Least share of the compute cap kept while backing off, in percent.
    pub min_share_percent: u32,
    /// Quiet seconds before the full share returns.
    pub recovery_seconds: u32,
}

/// The values a preset stands for.
pub fn preset_policy(preset: Preset) -> EffectivePolicy {
    let (vram, compute, nice, io_class, io_level, throttle, interval, batch) = match preset {
        Preset::Conservative => (50, 60, 15, IoClass::Idle, 7, true, 100, 2),
        Preset::Default => (70, 80, 10, IoClass::Idle, 7, true, 50, 4),
        Preset::Aggressive => (95, 95, 0, IoClass::BestEffort, 4, false, 0, 16),
    };
    EffectivePolicy {
        preset_in_force: preset,
        window: None,
        vram_max_percent: vram,
        compute_max_percent: compute,
        throttle_enabled: throttle,
        min_request_interval_ms: interval,
        max_batch_size: batch,
        max_queue_delay_ms: 5,
        nice,
        io_class,
        io_level,
        adaptive: None,
    }
}

/// Resolve the policy of `spec` at instant `now`.
///
/// Order: the preset (the window's preset while a window is in force), then the
/// profile's explicit fields. Errors name the field at fault.
pub fn effective_policy(
    spec: &ResourceProfileSpec,
    now: Timestamp,
) -> Result<EffectivePolicy, FieldError> {
    validate(spec)?;
    let window = window_in_force(spec, now)?;
    let preset = window.map_or(spec.preset, |(_, w)| w.preset);
    let mut policy = preset_policy(preset);
    policy.window = window.map(|(i, w)| w.name.clone().unwrap_or_else(|| format!("schedule[{i}]")));

    if let Some(p) = spec.vram.as_ref().and_then(|v| v.max_percent) {
        policy.vram_max_percent = p;
    }
    if let Some(p) = spec.compute.as_ref().and_then(|c| c.max_percent) {
        policy.compute_max_percent = p;
    }
    if let Some(t) = &spec.throttle {
        if let Some(enabled) = t.enabled {
            policy.throttle_enabled = enabled;
        }
        if let Some(ms) = t.min_request_interval_ms {
            policy.min_request_interval_ms = ms;
            // Naming an interval asks for throttling unless it is switched off explicitly.
            if t.enabled.is_none() && ms > 0 {
                policy.throttle_enabled = true;
            }
        }
    }
    if !policy.throttle_enabled {
        policy.min_request_interval_ms = 0;
    }
    if let Some(b) = &spec.batching {
        if let Some(n) = b.max_batch_size {
            policy.max_batch_size = n;
        }
        if let Some(ms) = b.max_queue_delay_ms {
            policy.max_queue_delay_ms = ms;
        }
    }
    if let Some(p) = &spec.process {
        if let Some(n) = p.nice {
            policy.nice = n;
        }
        if let Some(c) = p.io_class {
            policy.io_class = c;
        }
        if let Some(l) = p.io_level {
            policy.io_level = l;
        }
    }
    if let Some(a) = spec.adaptive.as_ref().filter(|a| a.enabled) {
        policy.adaptive = Some(AdaptivePolicy {
            other_utilization_percent: a.other_utilization_percent.unwrap_or(10),
            min_share_percent: a.min_share_percent.unwrap_or(10),
            recovery_seconds: a.recovery_seconds.unwrap_or(30),
        });
    }
    Ok(policy)
}

/// Checks the schema cannot express (it already bounds every number), repeated
/// here so that an agent in standalone mode, which has no API server, gets the
/// same errors.
fn validate(spec: &ResourceProfileSpec) -> Result<(), FieldError> {
    let percent = |field: &str, v: Option<u32>| match v {
        Some(p) if !(1..=100).contains(&p) => Err(FieldError::new(
            field,
            format!("must be between 1 and 100, got {p}"),
        )),
        _ => Ok(()),
    };
    percent(
        "spec.vram.maxPercent",
        spec.vram.as_ref().and_then(|v| v.max_percent),
    )?;
    percent(
        "spec.compute.maxPercent",
        spec.compute.as_ref().and_then(|c| c.max_percent),
    )?;
    if let Some(p) = &spec.process {
        if let Some(n) = p.nice.filter(|n| !(0..=19).contains(n)) {
            return Err(FieldError::new(
                "spec.process.nice",
                format!("must be between 0 and 19, got {n}"),
            ));
        }
        if let Some(l) = p.io_level.filter(|l| *l > 7) {
            return Err(FieldError::new(
                "spec.process.ioLevel",
                format!("must be between 0 and 7, got {l}"),
            ));
        }
    }
    if let Some(n) = spec
        .batching
        .as_ref()
        .and_then(|b| b.max_batch_size)
        .filter(|n| *n == 0)
    {
        return Err(FieldError::new(
            "spec.batching.maxBatchSize",
            format!("must be at least 1, got {n}"),
        ));
    }
    if let Some(a) = &spec.adaptive {
        percent(
            "spec.adaptive.otherUtilizationPercent",
            a.other_utilization_percent,
        )?;
        percent("spec.adaptive.minSharePercent", a.min_share_percent)?;
    }
    for (i, w) in spec.schedule.iter().enumerate() {
        let at = |f: &str| format!("spec.schedule[{i}].{f}");
        let start = parse_hhmm(&w.start).map_err(|m| FieldError::new(at("start"), m))?;
        let end = parse_hhmm(&w.end).map_err(|m| FieldError::new(at("end"), m))?;
        if start == end {
            return Err(FieldError::new(at("end"), "must differ from start"));
        }
        if w.days.is_empty() {
            return Err(FieldError::new(at("days"), "must name at least one day"));
        }
        zone(w).map_err(|m| FieldError::new(at("timeZone"), m))?;
    }
    Ok(())
}

fn parse_hhmm(s: &str) -> Result<civil::Time, String> {
    let bad = || format!("{s:?} is not a time of day in HH:MM (00:00-23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    civil::Time::new(h, m, 0, 0).map_err(|_| bad())
}

fn zone(w: &ScheduleWindow) -> Result<TimeZone, String> {
    match w.time_zone.as_deref() {
        None | Some("UTC") => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|_| format!("unknown IANA time zone {name:?}")),
    }
}

fn weekday(d: Weekday) -> civil::Weekday {
    match d {
        Weekday::Mon => civil::Weekday::Monday,
        Weekday::Tue => civil::Weekday::Tuesday,
        Weekday::Wed => civil::Weekday::Wednesday,
        Weekday::Thu => civil::Weekday::Thursday,
        Weekday::Fri => civil::Weekday::Friday,
        Weekday::Sat => civil::Weekday::Saturday,
        Weekday::Sun => civil::Weekday::Sunday,
    }
}

/// The occurrences `[start, end)` of a window that begin on the local days from
/// `from - 1 day` to `from + 7 days`.
fn occurrences(w: &ScheduleWindow, now: Timestamp) -> Result<Vec<(Timestamp, Timestamp)>, String> {
    let tz = zone(w)?;
    let start = parse_hhmm(&w.start)?;
    let end = parse_hhmm(&w.end)?;
    let today = now.to_zoned(tz.clone()).date();
    let mut out = Vec::new();
    for offset in -1i64..=7 {
        let day = today
            .checked_add(offset.days())
            .map_err(|e| e.to_string())?;
        if !w.days.iter().any(|d| weekday(*d) == day.weekday()) {
            continue;
        }
        let end_day = if end > start {
            day
        } else {
            day.checked_add(1.day()).map_err(|e| e.to_string())?
        };
        let s = instant(day.to_datetime(start), &tz)?;
        let e = instant(end_day.to_datetime(end), &tz)?;
        out.push((s, e));
    }
    Ok(out)
}

fn instant(dt: civil::DateTime, tz: &TimeZone) -> Result<Timestamp, String> {
    dt.to_zoned(tz.clone())
        .map(|z: Zoned| z.timestamp())
        .map_err(|e| e.to_string())
}

/// The first schedule window in force at `now`, with its index.
pub fn window_in_force(
    spec: &ResourceProfileSpec,
    now: Timestamp,
) -> Result<Option<(usize, &ScheduleWindow)>, FieldError> {
    for (i, w) in spec.schedule.iter().enumerate() {
        let occ =
            occurrences(w, now).map_err(|m| FieldError::new(format!("spec.schedule[{i}]"), m))?;
        if occ.iter().any(|(s, e)| *s <= now && now < *e) {
            return Ok(Some((i, w)));
        }
    }
    Ok(None)
}

/// The next instant after `now` at which a window starts or ends, i.e. when the
/// effective policy may change by itself. `None` without a schedule.
pub fn next_transition(spec: &ResourceProfileSpec, now: Timestamp) -> Option<Timestamp> {
    spec.schedule
        .iter()
        .filter_map(|w| occurrences(w, now).ok())
        .flatten()
        .flat_map(|(s, e)| [s, e])
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource_profile::{BatchingSpec, ProcessSpec, ThrottleSpec, VramSpec};

    fn at(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn office_hours() -> ResourceProfileSpec {
        ResourceProfileSpec {
            preset: Preset::Aggressive,
            schedule: vec![ScheduleWindow {
                name: Some("office".into()),
                days: vec![
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
                start: "09:00".into(),
                end: "18:00".into(),
                time_zone: Some("Europe/Berlin".into()),
                preset: Preset::Conservative,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn presets_have_the_documented_values() {
        let c = preset_policy(Preset::Conservative);
        assert_eq!(
            (
                c.vram_max_percent,
                c.compute_max_percent,
                c.nice,
                c.io_class,
                c.io_level
            ),
            (50, 60, 15, IoClass::Idle, 7)
        );
        assert_eq!(
            (
                c.throttle_enabled,
                c.min_request_interval_ms,
                c.max_batch_size
            ),
            (true, 100, 2)
        );
        let d = preset_policy(Preset::Default);
        assert_eq!(
            (
                d.vram_max_percent,
                d.compute_max_percent,
                d.nice,
                d.io_class
            ),
            (70, 80, 10, IoClass::Idle)
        );
        assert_eq!((d.min_request_interval_ms, d.max_batch_size), (50, 4));
        let a = preset_policy(Preset::Aggressive);
        assert_eq!(
            (a.vram_max_percent, a.compute_max_percent, a.nice),
            (95, 95, 0)
        );
        assert_eq!(
            (
                a.throttle_enabled,
                a.min_request_interval_ms,
                a.max_batch_size
            ),
            (false, 0, 16)
        );
    }

    #[test]
    fn explicit_fields_override_the_preset() {
        let spec = ResourceProfileSpec {
            preset: Preset::Conservative,
            vram: Some(VramSpec {
                max_percent: Some(33),
            }),
            batching: Some(BatchingSpec {
                max_batch_size: Some(8),
                max_queue_delay_ms: None,
            }),
            process: Some(ProcessSpec {
                nice: Some(5),
                io_class: Some(IoClass::BestEffort),
                io_level: Some(2),
            }),
            ..Default::default()
        };
        let p = effective_policy(&spec, at("2026-01-01T00:00:00Z")).expect("valid");
        assert_eq!(p.vram_max_percent, 33);
        assert_eq!(
            p.compute_max_percent, 60,
            "untouched fields keep the preset's value"
        );
        assert_eq!(p.max_batch_size, 8);
        assert_eq!(
            (p.nice, p.io_class, p.io_level),
            (5, IoClass::BestEffort, 2)
        );
    }

    #[test]
    fn an_interval_on_the_aggressive_preset_turns_throttling_on_and_disabled_throttle_zeroes_it() {
        let mut spec = ResourceProfileSpec {
            preset: Preset::Aggressive,
            throttle: Some(ThrottleSpec {
                enabled: None,
                min_request_interval_ms: Some(20),
            }),
            ..Default::default()
        };
        let p = effective_policy(&spec, at("2026-01-01T00:00:00Z")).expect("valid");
        assert!(p.throttle_enabled);
        assert_eq!(p.min_request_interval_ms, 20);

        spec.preset = Preset::Conservative;
        spec.throttle = Some(ThrottleSpec {
            enabled: Some(false),
            min_request_interval_ms: None,
        });
        let p = effective_policy(&spec, at("2026-01-01T00:00:00Z")).expect("valid");
        assert!(!p.throttle_enabled);
        assert_eq!(p.min_request_interval_ms, 0);
    }

    #[test]
    fn the_window_in_force_switches_the_preset_in_its_own_time_zone() {
        let spec = office_hours();
        // Monday 2026-11-23 10:00 in Berlin is 09:00 UTC.
        let p = effective_policy(&spec, at("2026-11-23T09:00:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Conservative);
        assert_eq!(p.window.as_deref(), Some("office"));
        // 07:59 UTC is 08:59 in Berlin: before the window.
        let p = effective_policy(&spec, at("2026-11-23T07:59:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Aggressive);
        assert_eq!(p.window, None);
        // Saturday: no window.
        let p = effective_policy(&spec, at("2026-11-28T10:00:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Aggressive);
    }

    #[test]
    fn explicit_fields_still_apply_inside_a_window() {
        let mut spec = office_hours();
        spec.vram = Some(VramSpec {
            max_percent: Some(40),
        });
        let p = effective_policy(&spec, at("2026-11-23T09:00:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Conservative);
        assert_eq!(p.vram_max_percent, 40);
    }

    #[test]
    fn a_window_past_midnight_ends_on_the_next_day() {
        let spec = ResourceProfileSpec {
            schedule: vec![ScheduleWindow {
                name: None,
                days: vec![Weekday::Fri],
                start: "22:00".into(),
                end: "06:00".into(),
                time_zone: None,
                preset: Preset::Aggressive,
            }],
            ..Default::default()
        };
        // Saturday 2026-11-28 05:59 UTC: inside Friday's window.
        let p = effective_policy(&spec, at("2026-11-28T05:59:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Aggressive);
        assert_eq!(p.window.as_deref(), Some("schedule[0]"));
        let p = effective_policy(&spec, at("2026-11-28T06:00:00Z")).expect("valid");
        assert_eq!(p.preset_in_force, Preset::Default);
    }

    #[test]
    fn next_transition_is_the_next_window_edge() {
        let spec = office_hours();
        // Monday 08:00 Berlin (07:00 UTC) -> start at 09:00 Berlin = 08:00 UTC.
        assert_eq!(
            next_transition(&spec, at("2026-11-23T07:00:00Z")),
            Some(at("2026-11-23T08:00:00Z"))
        );
        // Inside the window -> its end, 18:00 Berlin = 17:00 UTC.
        assert_eq!(
            next_transition(&spec, at("2026-11-23T12:00:00Z")),
            Some(at("2026-11-23T17:00:00Z"))
        );
        // Friday evening -> Monday morning.
        assert_eq!(
            next_transition(&spec, at("2026-11-27T20:00:00Z")),
            Some(at("2026-11-30T08:00:00Z"))
        );
        assert_eq!(
            next_transition(&ResourceProfileSpec::default(), at("2026-11-27T20:00:00Z")),
            None
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut spec = office_hours();
        spec.schedule[0].time_zone = Some("Mars/Olympus".into());
        let err = effective_policy(&spec, Timestamp::UNIX_EPOCH).expect_err("bad zone");
        assert_eq!(err.field, "spec.schedule[0].timeZone");
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");

        let mut spec = office_hours();
        spec.schedule[0].end = "24:30".into();
        let err = effective_policy(&spec, Timestamp::UNIX_EPOCH).expect_err("bad time");
        assert_eq!(err.field, "spec.schedule[0].end");

        let spec = ResourceProfileSpec {
            vram: Some(VramSpec {
                max_percent: Some(0),
            }),
            ..Default::default()
        };
        let err = effective_policy(&spec, Timestamp::UNIX_EPOCH).expect_err("bad percent");
        assert_eq!(err.field, "spec.vram.maxPercent");

        let spec = ResourceProfileSpec {
            process: Some(ProcessSpec {
                nice: Some(-5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = effective_policy(&spec, Timestamp::UNIX_EPOCH).expect_err("bad nice");
        assert_eq!(err.field, "spec.process.nice");
    }
}
