//! Process plumbing shared by the operator and the agent: one shutdown signal
//! for every task, structured logging, the probe and metrics server and who
//! may read the metrics.

pub mod http;
pub mod kube_client;
pub mod metrics_auth;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::Shutdown;
