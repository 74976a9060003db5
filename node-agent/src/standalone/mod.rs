//! Standalone mode: the agent without Kubernetes, driven by one file.

pub mod env;
pub mod file;
