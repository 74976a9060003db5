//! The GoGrid node agent: discovers the node's GPUs, resolves and applies its
//! ResourceProfile's policy, and reports both in the node's GpuNode.

pub mod config;
pub mod gpu;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod sync;

pub use config::{Cli, Command};

use std::sync::Arc;

use anyhow::Context as _;
use gogrid_runtime::Shutdown;

/// Run the command the CLI names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_in_cluster(args).await,
    }
}

async fn run_in_cluster(args: config::RunArgs) -> anyhow::Result<()> {
    let inventory = gpu::from_args(args.simulate_gpus.as_deref()).context("GPU inventory")?;
    tracing::info!(
        node = %args.node_name,
        profile = args.profile.as_deref().unwrap_or("<none>"),
        gpus = inventory.read().map(|g| g.len()).unwrap_or(0),
        simulated = inventory.simulated(),
        "agent starting"
    );
    let client = kube::Client::try_default()
        .await
        .context("building a Kubernetes client")?;
    let shutdown = Shutdown::on_signals();
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = http::Readiness::default();

    let (policy_tx, policy_rx) = tokio::sync::watch::channel(None);
    let profile_task = sync::profile::follow(
        client.clone(),
        args.profile.clone(),
        policy_tx,
        shutdown.clone(),
    );
    let reporter =
        sync::gpunode::Reporter::new(client, args.identity(), inventory, metrics.clone());
    let report_task = reporter.run(policy_rx, args.heartbeat(), ready.clone(), shutdown.clone());
    let http_task = http::serve(args.metrics_addr, metrics, ready, shutdown.clone());
    tokio::try_join!(profile_task, report_task, http_task)?;
    tracing::info!("agent shut down cleanly");
    Ok(())
}
