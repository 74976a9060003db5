//! Every agent writes its node's GpuNode (inventory, budget in force), owned by
//! the Node, so a node that leaves takes its GpuNode with it.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use gogrid_crds::GpuNode;
use gogrid_e2e::{client, ctl, is_local_harness, release_namespace, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, WatchEvent, WatchParams};

const WAIT: Duration = Duration::from_secs(120);
const GI: i64 = 1 << 30;

#[tokio::test]
async fn every_agent_reports_its_simulated_inventory_and_the_budget_of_its_profile()
-> anyhow::Result<()> {
    let client = client().await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release_namespace());
    let agents = pods
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/component=agent,gogrid.io/profile=default"),
        )
        .await?
        .items;
    anyhow::ensure!(!agents.is_empty(), "no agent pod of the default profile");
    for pod in agents {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let g = wait_for(
            &format!("GpuNode {node} reporting the default policy from pod IP {ip}"),
            WAIT,
            || async {
                let g = gpunodes.get_opt(&node).await?;
                Ok(g.filter(|g| {
                    g.status.as_ref().is_some_and(|s| {
                        s.policy
                            .as_ref()
                            .is_some_and(|p| p.preset_in_force.as_str() == "default")
                            && s.agent.as_ref().is_some_and(|a| a.pod_ip == ip)
                    })
                }))
            },
        )
        .await?;
        let owner = g.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owner.iter().any(|o| o.kind == "Node" && o.name == node),
            "GpuNode {node} is owned by its Node: {owner:?}"
        );
        let s = g.status.unwrap_or_default();
        assert!(s.simulated, "a declared inventory is marked simulated");
        assert_eq!(s.gpu_count, 2);
        assert!(s.gpus.iter().all(|gpu| gpu.memory_total_bytes == 24 * GI));
        let budget = s.budget.unwrap_or_default();
        assert_eq!(
            budget.vram_budget_bytes,
            2 * (24 * GI * 70 / 100),
            "70% of each GPU under the default preset"
        );
        assert!(s.heartbeat_time.is_some());
    }
    Ok(())
}

#[tokio::test]
async fn a_node_that_leaves_takes_its_gpunode_with_it() -> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: deletes and re-creates a node of the local harness");
        return Ok(());
    }
    let client = client().await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let node = gogrid_e2e::node_names(&client)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    wait_for(&format!("GpuNode {node}"), WAIT, || async {
        Ok(gpunodes.get_opt(&node).await?)
    })
    .await?;
    nodes.delete(&node, &DeleteParams::default()).await?;
    wait_for(
        &format!("GpuNode {node} garbage-collected with its Node"),
        WAIT,
        || async { Ok(gpunodes.get_opt(&node).await?.is_none().then_some(())) },
    )
    .await?;
    // Every status the new agent writes, from its first: none may say the
    // node has fewer GPUs than its inventory (the operator places on them).
    let mut events = gpunodes
        .watch(
            &WatchParams::default().fields(&format!("metadata.name={node}")),
            "0",
        )
        .await?
        .boxed();
    let index = node.rsplit('-').next().unwrap_or("3").to_owned();
    ctl(&["node-add", &index])?;
    let mut reported = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(event) = events.try_next().await? {
            if let WatchEvent::Added(g) | WatchEvent::Modified(g) = event
                && let Some(s) = g.status.filter(|s| s.agent.is_some())
            {
                reported.push(s.gpu_count);
                if s.policy.is_some() {
                    return anyhow::Ok(());
                }
            }
        }
        anyhow::bail!("the watch of GpuNode {node} ended")
    })
    .await
    .map_err(|_| anyhow::anyhow!("GpuNode {node} back with the node and its policy"))??;
    assert!(
        reported.iter().all(|&n| n == 2),
        "every status of the re-added node's GpuNode reports its 2 GPUs: {reported:?}"
    );
    Ok(())
}
