//! The GoGrid API (`gogrid.io/v1alpha1`): custom resource types, their CEL rules,
//! the presets and the effective-policy function shared by operator and agent.

pub mod analysis;
pub mod conditions;
pub mod crdgen;
pub mod gpu_node;
pub mod inference_deployment;
pub mod labels;
pub mod policy;
pub mod quantity;
pub mod resource_profile;
pub mod rollout;
pub mod selector;
pub mod validation;

pub use gpu_node::{GpuNode, GpuNodeSpec, GpuNodeStatus};
pub use inference_deployment::{
    InferenceDeployment, InferenceDeploymentSpec, InferenceDeploymentStatus,
};
pub use policy::{EffectivePolicy, effective_policy};
pub use resource_profile::{Preset, ResourceProfile, ResourceProfileSpec, ResourceProfileStatus};
pub use validation::FieldError;

/// The API group of every GoGrid kind.
pub const GROUP: &str = "gogrid.io";
/// The API version served by this crate.
pub const VERSION: &str = "v1alpha1";
