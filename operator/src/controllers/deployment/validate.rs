//! What the schema cannot check about an InferenceDeployment, through the checks
//! shared with the agent (`gogrid_crds::validation`).

use gogrid_crds::InferenceDeployment;
use gogrid_crds::validation;

use crate::Error;

/// Every check, first failure first; on success the VRAM one replica reserves.
pub fn validate(infd: &InferenceDeployment) -> Result<i64, Error> {
    validation::deployment_spec(&infd.spec).map_err(|e| Error::InvalidSpec {
        field: e.field,
        message: e.message,
    })
}
