//! The GoGrid node agent: discovers the node's GPUs, resolves and applies its
//! ResourceProfile's policy, and reports both in the node's GpuNode.

pub mod channel;
pub mod cluster;
pub mod config;
pub mod gpu;
pub mod hollow;
pub mod http;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod policy;
pub mod standalone;
pub mod sync;

pub use config::{Cli, Command};

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use gogrid_runtime::Shutdown;

/// Run the command the CLI names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_in_cluster(*args).await,
        Command::Serve(args) => run_standalone(args).await,
        Command::Hollow(args) => hollow::run(args).await,
    }
}

async fn run_in_cluster(args: config::RunArgs) -> anyhow::Result<()> {
    let inventory: Arc<dyn gpu::Inventory> = gpu::from_args(args.simulate_gpus.as_deref())
        .context("GPU inventory")?
        .into();
    tracing::info!(
        node = %args.node_name,
        profile = args.profile.as_deref().unwrap_or("<none>"),
        gpus = inventory.read().map(|g| g.len()).unwrap_or(0),
        simulated = inventory.simulated(),
        kernels = node::kernels(),
        "agent starting"
    );
    let client = gogrid_runtime::kube_client::client("gogrid-agent", &args.node_name)
        .await
        .context("building a Kubernetes client")?;
    // A signal starts the drain: the GpuNode says nothing is ready, the
    // operator takes the agent out of the EndpointSlices, and only after
    // `--drain-seconds` (answering all the while) does everything stop.
    let draining = Shutdown::on_signals();
    let shutdown = Shutdown::default();
    let drain_task = {
        let (draining, shutdown, drain) = (draining.clone(), shutdown.clone(), args.drain());
        async move {
            draining.wait().await;
            tracing::info!(seconds = drain.as_secs(), "draining before shutdown");
            tokio::time::sleep(drain).await;
            shutdown.trigger();
            anyhow::Ok(())
        }
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = http::Readiness::default();
    let auth = args.metrics_auth.build(&client);
    let (watches, watch_task) =
        cluster::Watches::start(client.clone(), args.profile.clone(), shutdown.clone());
    let node_task = cluster::run_node(cluster::NodeRun {
        client,
        watches,
        identity: args.identity(),
        inventory,
        listen: Some(node::Listen {
            http: args.http_addr,
            grpc: args.grpc_addr,
            after: Some(ready.clone()),
        }),
        hollow: false,
        heartbeat: args.heartbeat(),
        stats_every: args.stats_every(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        draining,
        shutdown: shutdown.clone(),
    });
    let http_task = http::serve(args.metrics_addr, metrics, ready, auth, shutdown.clone());
    tokio::try_join!(watch_task, node_task, http_task, drain_task)?;
    tracing::info!("agent shut down cleanly");
    Ok(())
}

async fn run_standalone(args: config::ServeArgs) -> anyhow::Result<()> {
    let file = standalone::file::load(&args.config)?;
    let inventory: Arc<dyn gpu::Inventory> = gpu::from_args(file.simulate_gpus.as_deref())
        .context("GPU inventory")?
        .into();
    tracing::info!(
        config = %args.config.display(),
        deployments = file.deployments.len(),
        gpus = inventory.read().map(|g| g.len()).unwrap_or(0),
        kernels = node::kernels(),
        "standalone agent starting"
    );
    let shutdown = Shutdown::on_signals();
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = http::Readiness::default();
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(None);
    let specs =
        futures::stream::iter([Some(file.profile.clone())]).chain(futures::stream::pending());
    let profile_task =
        sync::profile::publish_loop("standalone", specs, policy_tx, shutdown.clone());
    let desired: Vec<sync::deployments::Desired> = file
        .deployments
        .iter()
        .map(|d| {
            sync::deployments::Desired::from_spec(
                sync::deployments::DeploymentKey {
                    namespace: "standalone".into(),
                    name: d.name.clone(),
                },
                d.spec.clone(),
            )
        })
        .collect();
    let (_desired_tx, desired_rx) = tokio::sync::watch::channel(desired);
    let (outputs, reports) = node::Outputs::channel(inventory.as_ref());
    let mut pipelines_rx = reports.pipelines;
    let node_task = node::run(
        node::Inputs {
            inventory,
            policy: policy_rx,
            desired: desired_rx,
            stats_every: pipeline::manager::STATS_EVERY,
            hollow: false,
        },
        Some(node::Listen {
            http: file.listen.http,
            grpc: file.listen.grpc,
            after: None,
        }),
        metrics.clone(),
        outputs,
        shutdown.clone(),
    );
    // Without a GpuNode to report to, the pipelines' state goes to the log and
    // readiness follows them.
    let watch_task = {
        let (ready, shutdown) = (ready.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    changed = pipelines_rx.changed() => if changed.is_err() { return anyhow::Ok(()) },
                    _ = shutdown.wait() => return Ok(()),
                }
                let all = pipelines_rx.borrow_and_update().clone();
                for p in &all {
                    tracing::info!(deployment = %p.deployment, version = %p.version, ready = p.ready, message = p.message.as_deref(), "pipeline");
                }
                ready.set(!all.is_empty() && all.iter().all(|p| p.ready));
            }
        }
    };
    // Standalone: no API server to ask, the metrics answer whoever reaches
    // the listen address (loopback by default).
    let http_task = http::serve(file.listen.metrics, metrics, ready, None, shutdown.clone());
    tokio::try_join!(profile_task, node_task, watch_task, http_task)?;
    tracing::info!("agent shut down cleanly");
    Ok(())
}
