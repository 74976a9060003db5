//! ResourceProfiles on a real control plane: the operator labels the nodes each
//! profile wins, runs one agent DaemonSet per profile, and agent pods run on
//! exactly the matched nodes; moving a node to another profile moves its agent.

use std::collections::BTreeMap;
use std::time::Duration;

use gogrid_crds::labels::PROFILE_LABEL;
use gogrid_crds::{ResourceProfile, ResourceProfileSpec};
use gogrid_e2e::{agent_nodes, client, label_node, release_namespace, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

const WAIT: Duration = Duration::from_secs(90);

fn profile(name: &str, label: &str, priority: i32) -> ResourceProfile {
    ResourceProfile::new(
        name,
        ResourceProfileSpec {
            priority,
            node_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(label.to_owned(), "yes".to_owned())])),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

async fn node_profile(nodes: &Api<Node>, node: &str) -> anyhow::Result<Option<String>> {
    Ok(nodes
        .get(node)
        .await?
        .metadata
        .labels
        .unwrap_or_default()
        .get(PROFILE_LABEL)
        .cloned())
}

#[tokio::test]
async fn profiles_label_their_nodes_run_agents_there_and_moving_a_node_moves_its_agent()
-> anyhow::Result<()> {
    let client = client().await?;
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &release_namespace());
    let names = gogrid_e2e::node_names(&client).await?;
    anyhow::ensure!(names.len() >= 2, "need two nodes, have {names:?}");
    let (a, b) = (names[0].clone(), names[1].clone());

    profiles
        .create(
            &PostParams::default(),
            &profile("e2e-desk", "e2e.gogrid.io/desk", 100),
        )
        .await?;
    profiles
        .create(
            &PostParams::default(),
            &profile("e2e-server", "e2e.gogrid.io/server", 100),
        )
        .await?;
    label_node(&client, &a, "e2e.gogrid.io/desk", Some("yes")).await?;
    label_node(&client, &b, "e2e.gogrid.io/desk", Some("yes")).await?;

    // Both nodes join e2e-desk, its DaemonSet exists, agents run on exactly them.
    for n in [&a, &b] {
        wait_for(&format!("{n} labelled e2e-desk"), WAIT, || async {
            Ok((node_profile(&nodes, n).await?.as_deref() == Some("e2e-desk")).then_some(()))
        })
        .await?;
    }
    let ds = wait_for("DaemonSet gogrid-agent-e2e-desk", WAIT, || async {
        Ok(daemonsets.get_opt("gogrid-agent-e2e-desk").await?)
    })
    .await?;
    let selector = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.node_selector)
        .unwrap_or_default();
    assert_eq!(
        selector.get(PROFILE_LABEL).map(String::as_str),
        Some("e2e-desk")
    );
    let want = {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    };
    wait_for(
        "agents of e2e-desk on exactly its two nodes",
        WAIT,
        || async {
            let got = agent_nodes(&client, "e2e-desk").await?;
            Ok((got == want).then_some(()))
        },
    )
    .await?;
    let status = wait_for("e2e-desk status counting two nodes", WAIT, || async {
        let p = profiles.get("e2e-desk").await?;
        Ok(p.status.filter(|s| {
            s.matched_node_count == 2 && s.observed_generation == p.metadata.generation
        }))
    })
    .await?;
    assert_eq!(status.matched_nodes, want);
    assert!(
        status.effective_policy.is_some(),
        "the effective policy is in status"
    );

    // Move b to e2e-server: its agent moves with it.
    label_node(&client, &b, "e2e.gogrid.io/desk", None).await?;
    label_node(&client, &b, "e2e.gogrid.io/server", Some("yes")).await?;
    wait_for(&format!("{b} labelled e2e-server"), WAIT, || async {
        Ok((node_profile(&nodes, &b).await?.as_deref() == Some("e2e-server")).then_some(()))
    })
    .await?;
    wait_for(
        "e2e-desk agents only on the node that stayed",
        WAIT,
        || async { Ok((agent_nodes(&client, "e2e-desk").await? == [a.clone()]).then_some(())) },
    )
    .await?;
    wait_for("an e2e-server agent on the moved node", WAIT, || async {
        Ok((agent_nodes(&client, "e2e-server").await? == [b.clone()]).then_some(()))
    })
    .await?;

    // A node that stops matching loses the label; deleting a profile frees its nodes.
    label_node(&client, &b, "e2e.gogrid.io/server", None).await?;
    wait_for(&format!("{b} no longer in e2e-server"), WAIT, || async {
        Ok((node_profile(&nodes, &b).await?.as_deref() != Some("e2e-server")).then_some(()))
    })
    .await?;
    profiles
        .delete("e2e-desk", &DeleteParams::default())
        .await?;
    profiles
        .delete("e2e-server", &DeleteParams::default())
        .await?;
    label_node(&client, &a, "e2e.gogrid.io/desk", None).await?;
    wait_for(&format!("{a} no longer in e2e-desk"), WAIT, || async {
        Ok((node_profile(&nodes, &a).await?.as_deref() != Some("e2e-desk")).then_some(()))
    })
    .await?;
    wait_for("the e2e-desk DaemonSet garbage-collected", WAIT, || async {
        Ok(daemonsets
            .get_opt("gogrid-agent-e2e-desk")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_higher_priority_profile_wins_a_node_both_select() -> anyhow::Result<()> {
    let client = client().await?;
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let node = gogrid_e2e::node_names(&client)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no node"))?;
    let mut low = profile("e2e-low", "e2e.gogrid.io/both", 200);
    let high = profile("e2e-high", "e2e.gogrid.io/both", 300);
    profiles.create(&PostParams::default(), &low).await?;
    profiles.create(&PostParams::default(), &high).await?;
    label_node(&client, &node, "e2e.gogrid.io/both", Some("yes")).await?;
    wait_for(
        "the node labelled with the higher-priority profile",
        WAIT,
        || async {
            Ok((node_profile(&nodes, &node).await?.as_deref() == Some("e2e-high")).then_some(()))
        },
    )
    .await?;
    // Raise the other one above it: the node changes hands.
    low.spec.priority = 400;
    let patch = serde_json::json!({"spec": {"priority": 400}});
    profiles
        .patch(
            "e2e-low",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    wait_for("the node moved to the raised profile", WAIT, || async {
        Ok((node_profile(&nodes, &node).await?.as_deref() == Some("e2e-low")).then_some(()))
    })
    .await?;
    profiles.delete("e2e-low", &DeleteParams::default()).await?;
    profiles
        .delete("e2e-high", &DeleteParams::default())
        .await?;
    label_node(&client, &node, "e2e.gogrid.io/both", None).await?;
    Ok(())
}
