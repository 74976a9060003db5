//! The GoGrid operator: reconciles ResourceProfiles into node labels and agent
//! DaemonSets, and InferenceDeployments into placement, Services,
//! EndpointSlices and traffic splits.

pub mod apply;
pub mod config;
pub mod context;
pub mod controllers;
pub mod error;
pub mod events;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod leader;
pub mod metrics;

pub use config::{Cli, Command};
pub use error::{Error, Result};

use anyhow::Context as _;

/// Run the command the CLI names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_operator(args).await,
    }
}

async fn run_operator(args: config::RunArgs) -> anyhow::Result<()> {
    let election = args.leader_election();
    let client = gogrid_runtime::kube_client::client("gogrid-operator", &election.identity)
        .await
        .context("building a Kubernetes client")?;
    let shutdown = gogrid_runtime::Shutdown::on_signals();
    let metrics = std::sync::Arc::new(metrics::Metrics::default());
    let state = http::State::new(metrics.clone());
    // Every replica serves metrics; a follower is ready while it waits for the Lease.
    state.set_ready(true);
    let auth = args.metrics_auth.build(&client);
    let http = http::serve(args.http_addr, state.clone(), auth, shutdown.clone());
    let config = args.operator_config();
    let work = leader::run_while_leader(
        client.clone(),
        election,
        metrics.clone(),
        shutdown.clone(),
        move |leading| {
            let ctx = context::Context::new(client.clone(), config.clone(), metrics.clone());
            controllers::run(ctx, leading, state.clone())
        },
    );
    tokio::try_join!(http, work)?;
    tracing::info!("operator shut down cleanly");
    Ok(())
}
