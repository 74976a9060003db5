//! Status conditions: a list keyed by `type`, each carrying `observedGeneration`,
//! whose `lastTransitionTime` moves only when the status flips.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: the object does what it asks for.
pub const READY: &str = "Ready";
/// `Progressing`: a change is being rolled out.
pub const PROGRESSING: &str = "Progressing";
/// `Degraded`: something is wrong and needs attention.
pub const DEGRADED: &str = "Degraded";
/// `PolicyValid`: the profile resolves to a policy.
pub const POLICY_VALID: &str = "PolicyValid";

/// A condition to set, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// True or false.
    pub status: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Plain-words message.
    pub message: String,
}

impl Desired {
    /// A condition with status True.
    pub fn yes(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition with status False.
    pub fn no(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Merge `desired` into `current`: conditions of other types are kept, a changed
/// status gets `now` as its transition time, an unchanged one keeps its time.
/// The result is sorted by type so that equal states compare equal.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let previous = current.iter().find(|c| c.type_ == d.type_);
        let status = status_str(d.status);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: d.type_.to_owned(),
            status: status.to_owned(),
            reason: d.reason.clone(),
            message: truncate(&d.message, 1024),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Find a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_status_keeps_its_transition_time_and_a_flip_moves_it() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("t0");
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().expect("t1");
        let first = merge(
            &[],
            &[Desired::yes(READY, "AllReady", "3 of 3")],
            Some(1),
            t0,
        );
        let again = merge(
            &first,
            &[Desired::yes(READY, "AllReady", "3 of 3 (again)")],
            Some(2),
            t1,
        );
        assert_eq!(again[0].last_transition_time, Time(t0));
        assert_eq!(again[0].observed_generation, Some(2));
        let flipped = merge(
            &again,
            &[Desired::no(READY, "NotReady", "0 of 3")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn other_conditions_are_kept_and_the_list_is_sorted() {
        let t0 = Timestamp::UNIX_EPOCH;
        let a = merge(
            &[],
            &[Desired::yes(READY, "R", ""), Desired::no(DEGRADED, "D", "")],
            None,
            t0,
        );
        let b = merge(&a, &[Desired::yes(PROGRESSING, "P", "")], None, t0);
        let types: Vec<_> = b.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Degraded", "Progressing", "Ready"]);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(1000);
        let t = truncate(&s, 1024);
        assert!(t.len() <= 1024 && t.ends_with("..."));
    }
}
