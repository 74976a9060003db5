//! Command line and environment of `gogrid-agent`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gogrid_runtime::telemetry::LogArgs;

/// The GoGrid node agent.
#[derive(Parser, Debug)]
#[command(name = "gogrid-agent", version, about)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub logging: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run as the agent of one Kubernetes node (what the DaemonSet runs).
    Run(Box<RunArgs>),
    /// Run without Kubernetes, from one file (listen addresses, a ResourceProfile
    /// spec, InferenceDeployment specs): desktops and tests.
    Serve(ServeArgs),
    /// Play many nodes' agents in one process (kubemark's "hollow" nodes):
    /// each node its own client, watches, policy, VRAM ledger, traffic split
    /// and GpuNode, as `run` has, with no model loaded and no server; for
    /// scale tests on kwok nodes.
    Hollow(HollowArgs),
}

/// Settings of `gogrid-agent hollow`.
#[derive(Args, Debug, Clone)]
pub struct HollowArgs {
    /// A JSON file listing the nodes to play:
    /// `[{"node": "...", "pod": "...", "podIP": "...", "profile": "..."}, ...]`.
    #[arg(long, env = "GOGRID_HOLLOW_NODES")]
    pub nodes: std::path::PathBuf,
    /// The GPUs each node declares, e.g. `2x24Gi`.
    #[arg(long, env = "GOGRID_SIMULATE_GPUS", default_value = "2x24Gi")]
    pub simulate_gpus: String,
    /// Address of the process's /metrics (the nodes' splits and counts summed
    /// by node), /healthz and /readyz, and /hollow/splits.
    #[arg(long, env = "GOGRID_METRICS_ADDR", default_value = "127.0.0.1:8002")]
    pub metrics_addr: SocketAddr,
    /// Seconds between heartbeats of each GpuNode when nothing changes.
    #[arg(long, env = "GOGRID_HEARTBEAT_SECONDS", default_value_t = 30)]
    pub heartbeat_seconds: u64,
    /// Seconds between reports of request counts.
    #[arg(long, env = "GOGRID_STATS_SECONDS", default_value_t = 10)]
    pub stats_seconds: u64,
}

/// Settings of `gogrid-agent serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The agent file (see manifests/examples/agent.yaml).
    #[arg(long, env = "GOGRID_AGENT_CONFIG")]
    pub config: std::path::PathBuf,
}

/// Settings of `gogrid-agent run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Who may read /metrics.
    #[command(flatten)]
    pub metrics_auth: gogrid_runtime::metrics_auth::MetricsAuthArgs,
    /// Name of the node this agent owns.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Name of the agent pod.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// IP of the agent pod (EndpointSlices point here).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
    /// The node's ResourceProfile.
    #[arg(long, env = "GOGRID_PROFILE")]
    pub profile: Option<String>,
    /// Address of the REST inference endpoint.
    #[arg(long, env = "GOGRID_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC inference endpoint.
    #[arg(long, env = "GOGRID_GRPC_ADDR", default_value = "127.0.0.1:8001")]
    pub grpc_addr: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "GOGRID_METRICS_ADDR", default_value = "127.0.0.1:8002")]
    pub metrics_addr: SocketAddr,
    /// Declared GPU inventory instead of NVML, e.g. `2x24Gi` or `24Gi,16Gi`. The
    /// GpuNode is then marked simulated. For tests and demos on machines without GPUs.
    #[arg(long, env = "GOGRID_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
    /// Seconds between heartbeats of the GpuNode status when nothing changes.
    #[arg(long, env = "GOGRID_HEARTBEAT_SECONDS", default_value_t = 30)]
    pub heartbeat_seconds: u64,
    /// Seconds between reports of each version's request counts (canary
    /// analysis reads them; an idle node writes nothing).
    #[arg(long, env = "GOGRID_STATS_SECONDS", default_value_t = 10)]
    pub stats_seconds: u64,
    /// Seconds between a stop signal and the end of serving: the agent reports
    /// itself not ready at once and keeps answering while the operator takes
    /// it out of the EndpointSlices (keep it below the pod's grace period).
    #[arg(long, env = "GOGRID_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
}

/// Who this agent is, as written into its GpuNode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Node name.
    pub node: String,
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub pod_ip: String,
    /// Profile name.
    pub profile: Option<String>,
    /// REST port.
    pub http_port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
}

impl RunArgs {
    /// The identity of this agent.
    pub fn identity(&self) -> Identity {
        Identity {
            node: self.node_name.clone(),
            pod: self.pod_name.clone(),
            pod_ip: self.pod_ip.clone(),
            profile: self.profile.clone(),
            http_port: self.http_addr.port(),
            grpc_port: self.grpc_addr.port(),
            metrics_port: self.metrics_addr.port(),
        }
    }

    /// How long to keep answering after a stop signal.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// How often request counts are reported.
    pub fn stats_every(&self) -> Duration {
        Duration::from_secs(self.stats_seconds.max(1))
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds.max(1))
    }
}
