//! `gogrid-agent hollow`: many nodes' agents in one process, as Kubernetes'
//! kubemark runs "hollow" kubelets: each node has its own client for its
//! GpuNode (marked `hollow`), its own policy, VRAM ledger and traffic split,
//! all through [`crate::cluster::run_node`], the code path of a real agent;
//! only no model is loaded and no server listens. The nodes read the
//! process's one InferenceDeployment watch and one watch per profile
//! ([`crate::cluster::Watches`], what a real agent reads with one node on
//! them), so 1000 nodes cost the API server a few watches, not 2000.
//!
//! `/hollow/splits` answers, for every node, when each deployment's traffic
//! split last changed there (Unix seconds): the scale bench reads it to time
//! a weight edit reaching every node.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::get;
use gogrid_runtime::Shutdown;
use gogrid_runtime::http::{self as probes, Readiness};
use serde::Deserialize;

use crate::cluster::{NodeRun, Watches, run_node};
use crate::config::{HollowArgs, Identity};
use crate::metrics::Metrics;

/// One node a hollow agent plays.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HollowNode {
    /// Node name.
    pub node: String,
    /// Its agent pod.
    pub pod: String,
    /// The pod's IP (what the EndpointSlices would list).
    #[serde(rename = "podIP")]
    pub pod_ip: String,
    /// Its ResourceProfile.
    pub profile: Option<String>,
}

/// Reads the nodes file.
pub fn nodes(path: &std::path::Path) -> anyhow::Result<Vec<HollowNode>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a list of nodes", path.display()))
}

/// Runs every node of `args.nodes` until a stop signal.
pub async fn run(args: HollowArgs) -> anyhow::Result<()> {
    let nodes = nodes(&args.nodes)?;
    tracing::info!(nodes = nodes.len(), gpus = %args.simulate_gpus, "hollow agent starting");
    let shutdown = Shutdown::on_signals();
    let mut tasks = tokio::task::JoinSet::new();
    let mut played: Vec<(String, Arc<Metrics>, Readiness)> = Vec::with_capacity(nodes.len());
    let watch_client = gogrid_runtime::kube_client::client(
        "gogrid-agent-hollow",
        &format!("watches of {} nodes", nodes.len()),
    )
    .await
    .context("building a Kubernetes client")?;
    let (watches, watch_task) = Watches::start(
        watch_client,
        nodes
            .iter()
            .filter_map(|n| n.profile.clone())
            .collect::<Vec<_>>(),
        shutdown.clone(),
    );
    for n in nodes {
        let inventory: Arc<dyn crate::gpu::Inventory> =
            crate::gpu::from_args(Some(&args.simulate_gpus))
                .context("GPU inventory")?
                .into();
        let client = gogrid_runtime::kube_client::client("gogrid-agent-hollow", &n.node)
            .await
            .context("building a Kubernetes client")?;
        let metrics = Arc::new(Metrics::default());
        let ready = Readiness::default();
        played.push((n.node.clone(), metrics.clone(), ready.clone()));
        let run = NodeRun {
            client,
            watches: watches.clone(),
            identity: Identity {
                node: n.node,
                pod: n.pod,
                pod_ip: n.pod_ip,
                profile: n.profile,
                http_port: 8000,
                grpc_port: 8001,
                metrics_port: 8002,
            },
            inventory,
            listen: None,
            hollow: true,
            heartbeat: std::time::Duration::from_secs(args.heartbeat_seconds.max(1)),
            stats_every: std::time::Duration::from_secs(args.stats_seconds.max(1)),
            metrics,
            ready,
            draining: shutdown.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(run_node(run));
    }
    let played = Arc::new(played);
    let summary = {
        let played = played.clone();
        Arc::new(move || {
            let reporting = played.iter().filter(|(_, _, r)| r.get()).count();
            format!(
                "# HELP gogrid_hollow_nodes Nodes this hollow agent plays.\n# TYPE gogrid_hollow_nodes gauge\ngogrid_hollow_nodes {}\n# HELP gogrid_hollow_nodes_reporting Nodes whose GpuNode was written.\n# TYPE gogrid_hollow_nodes_reporting gauge\ngogrid_hollow_nodes_reporting {reporting}\n",
                played.len()
            )
        })
    };
    let all_ready = Readiness::default();
    all_ready.set(true);
    let splits = {
        let played = played.clone();
        move || {
            let played = played.clone();
            async move {
                let out: BTreeMap<String, BTreeMap<String, f64>> = played
                    .iter()
                    .map(|(node, m, _)| {
                        let last = m
                            .split
                            .last_applied
                            .lock()
                            .map(|l| l.clone())
                            .unwrap_or_default();
                        (node.clone(), last)
                    })
                    .collect();
                axum::Json(out)
            }
        }
    };
    let router = probes::router(summary, all_ready, None).route("/hollow/splits", get(splits));
    let http = probes::serve(args.metrics_addr, router, shutdown.clone());
    let nodes = async {
        while let Some(done) = tasks.join_next().await {
            done.context("a hollow node's task")??;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(watch_task, http, nodes)?;
    tracing::info!("hollow agent shut down cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_file_is_a_list_of_nodes_and_a_misspelt_field_is_named() {
        let dir = std::env::temp_dir().join(format!("gogrid-hollow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("good.json");
        std::fs::write(
            &good,
            r#"[{"node":"n1","pod":"gogrid-agent-x","podIP":"10.0.0.1","profile":"default"}]"#,
        )
        .expect("write");
        let read = nodes(&good).expect("nodes");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].pod_ip, "10.0.0.1");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"[{"node":"n1","pod":"p","podIp":"10.0.0.1"}]"#).expect("write");
        let e = format!("{:#}", nodes(&bad).expect_err("misspelt field"));
        assert!(e.contains("podIp"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
