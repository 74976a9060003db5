//! The agent's link to the API server: follow the node's ResourceProfile, and
//! report the node in its GpuNode.

pub mod deployments;
pub mod gpunode;
pub mod profile;
