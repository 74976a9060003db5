//! Command line and environment of `gogrid-operator`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::leader::LeaderElection;
use gogrid_runtime::telemetry::LogArgs;

/// The GoGrid operator.
#[derive(Parser, Debug)]
#[command(name = "gogrid-operator", version, about)]
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
    /// Run the controllers against the cluster of the current kubeconfig or
    /// in-cluster service account.
    Run(RunArgs),
}

/// Settings of `gogrid-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "GOGRID_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Who may read /metrics.
    #[command(flatten)]
    pub metrics_auth: gogrid_runtime::metrics_auth::MetricsAuthArgs,
    /// Namespace of the agent DaemonSets (the release namespace).
    #[arg(long, env = "GOGRID_AGENT_NAMESPACE", default_value = "gogrid-system")]
    pub agent_namespace: String,
    /// Image of the node agent.
    #[arg(
        long,
        env = "GOGRID_AGENT_IMAGE",
        default_value = "ghcr.io/gogrid/gogrid-agent:0.1.0"
    )]
    pub agent_image: String,
    /// Pull policy of the agent image.
    #[arg(
        long,
        env = "GOGRID_AGENT_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub agent_image_pull_policy: String,
    /// ServiceAccount the agent pods run as.
    #[arg(
        long,
        env = "GOGRID_AGENT_SERVICE_ACCOUNT",
        default_value = "gogrid-agent"
    )]
    pub agent_service_account: String,
    /// RuntimeClass of agent pods (e.g. `nvidia`); none by default.
    #[arg(long, env = "GOGRID_AGENT_RUNTIME_CLASS")]
    pub agent_runtime_class: Option<String>,
    /// Agent HTTP (REST inference) port.
    #[arg(long, env = "GOGRID_AGENT_HTTP_PORT", default_value_t = 8000)]
    pub agent_http_port: i32,
    /// Agent gRPC port.
    #[arg(long, env = "GOGRID_AGENT_GRPC_PORT", default_value_t = 8001)]
    pub agent_grpc_port: i32,
    /// Agent metrics and probe port.
    #[arg(long, env = "GOGRID_AGENT_METRICS_PORT", default_value_t = 8002)]
    pub agent_metrics_port: i32,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gogrid-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease is held without renewal before another replica takes over.
    #[arg(long, env = "GOGRID_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds a GpuNode heartbeat may age before its agent counts as gone.
    #[arg(long, env = "GOGRID_AGENT_STALE_SECONDS", default_value_t = 90)]
    pub agent_stale_seconds: i64,
}

impl RunArgs {
    /// The controller settings.
    pub fn operator_config(&self) -> Arc<OperatorConfig> {
        Arc::new(OperatorConfig {
            agent_namespace: self.agent_namespace.clone(),
            agent_image: self.agent_image.clone(),
            agent_image_pull_policy: self.agent_image_pull_policy.clone(),
            agent_service_account: self.agent_service_account.clone(),
            agent_runtime_class: self.agent_runtime_class.clone(),
            agent_ports: AgentPorts {
                http: self.agent_http_port,
                grpc: self.agent_grpc_port,
                metrics: self.agent_metrics_port,
            },
            agent_stale_seconds: self.agent_stale_seconds,
            metrics_auth: self.metrics_auth.enabled,
        })
    }

    /// The leader-election settings.
    pub fn leader_election(&self) -> LeaderElection {
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gogrid-operator".into());
            format!("{host}-{}", std::process::id())
        });
        LeaderElection {
            namespace: self.lease_namespace.clone(),
            identity,
            duration_seconds: self.lease_duration_seconds,
        }
    }
}

/// Ports the agent listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentPorts {
    /// REST inference.
    pub http: i32,
    /// gRPC inference.
    pub grpc: i32,
    /// Metrics and probes.
    pub metrics: i32,
}

/// What the controllers need to know about the installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Namespace of the agent DaemonSets.
    pub agent_namespace: String,
    /// Agent image.
    pub agent_image: String,
    /// Agent image pull policy.
    pub agent_image_pull_policy: String,
    /// Agent ServiceAccount.
    pub agent_service_account: String,
    /// Agent RuntimeClass.
    pub agent_runtime_class: Option<String>,
    /// Agent ports.
    pub agent_ports: AgentPorts,
    /// Heartbeat age after which an agent counts as gone.
    pub agent_stale_seconds: i64,
    /// Whether `/metrics` answers authorized readers only (this replica's
    /// setting, passed on to the agents).
    pub metrics_auth: bool,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            agent_namespace: "gogrid-system".into(),
            agent_image: "ghcr.io/gogrid/gogrid-agent:0.1.0".into(),
            agent_image_pull_policy: "IfNotPresent".into(),
            agent_service_account: "gogrid-agent".into(),
            agent_runtime_class: None,
            agent_ports: AgentPorts {
                http: 8000,
                grpc: 8001,
                metrics: 8002,
            },
            agent_stale_seconds: 90,
            metrics_auth: true,
        }
    }
}
