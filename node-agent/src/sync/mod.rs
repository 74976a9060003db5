//! The agent's link to the API server: follow the node's ResourceProfile, and
//! report the node in its GpuNode.

pub mod deployments;
pub mod gpunode;
pub mod profile;

/// The server-side timeout of the agent's watches, in seconds: a watch that
/// stays silent this long (plus 5 s) is taken for dead and started again, so a
/// connection that died without a close (an API server restarting mid watch)
/// is noticed within this bound instead of kube's default 290 s.
pub const WATCH_TIMEOUT_SECONDS: u32 = 30;
