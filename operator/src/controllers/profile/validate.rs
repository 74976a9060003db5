//! What the schema cannot check about a profile: that its policy resolves
//! (time zones exist, windows are well-formed).

use gogrid_crds::{EffectivePolicy, FieldError, ResourceProfile, effective_policy};

/// The effective policy now, or the error naming the field at fault.
pub fn validate(
    profile: &ResourceProfile,
    now: jiff::Timestamp,
) -> Result<EffectivePolicy, FieldError> {
    effective_policy(&profile.spec, now)
}
