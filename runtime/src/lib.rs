//! Process plumbing shared by the operator and the agent: one shutdown signal
//! for every task, and structured logging.

pub mod http;
pub mod kube_client;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::Shutdown;
