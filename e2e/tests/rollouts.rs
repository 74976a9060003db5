//! Time-driven rollouts on a real control plane with real agents: canary
//! steps advance by themselves and promote, and a blue-green preview is
//! promoted by itself, the previous version staying loaded for the
//! scale-down delay before it is unloaded; each move is an Event. A canary
//! that no node can hold next to the stable version waits, and says why.

use std::time::Duration;

use anyhow::Context as _;
use gogrid_crds::InferenceDeployment;
use gogrid_crds::inference_deployment::RolloutPhase;
use gogrid_e2e::{
    TestNamespace, agent_nodes, big_model, client, pipelines_of, wait_for, wait_for_split,
};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);

fn model(name: &str, version: &str) -> anyhow::Result<Value> {
    let path = std::env::var("GOGRID_MODEL_MINILM")
        .context("GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors")?;
    Ok(
        json!({"name": name, "version": version, "format": "safetensors", "task": "embedding",
              "source": {"path": path}}),
    )
}

/// Creates deployment `name` of MiniLM v1 with `rollout` (v2 is the new
/// version) and returns how many agents serve the default profile.
async fn create(
    client: &kube::Client,
    ns: &str,
    name: &str,
    rollout: Value,
) -> anyhow::Result<usize> {
    let nodes = agent_nodes(client, "default").await?.len();
    anyhow::ensure!(nodes > 0, "no agents of the default profile");
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name},
            "spec": {"profile": "default", "model": model(name, "v1")?, "rollout": rollout}
        }))?,
    )
    .await?;
    Ok(nodes)
}

async fn event_reasons(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect())
}

#[tokio::test]
async fn canary_steps_advance_by_themselves_and_promote() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "steps").await?;
    let name = "stepped";
    let rollout = json!({"strategy": "Canary", "canary": {"model": model(name, "v2")?,
        "steps": [{"weight": 20, "pauseSeconds": 4}, {"weight": 60, "pauseSeconds": 4}]}});
    let nodes = create(&client, &ns.name, name, rollout).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let key = (ns.name.as_str(), name);
    wait_for_split(&client, key, nodes, "v2", Some(20), WAIT).await?;
    wait_for_split(&client, key, nodes, "v2", Some(60), WAIT).await?;
    let step = api.get(name).await?.status.and_then(|s| s.rollout);
    assert_eq!(step.as_ref().and_then(|r| r.step), Some(1), "{step:?}");
    // After the last step's pause the canary takes everything and v1 goes.
    wait_for_split(&client, key, nodes, "v2", Some(100), WAIT).await?;
    wait_for_split(&client, key, nodes, "v1", None, WAIT).await?;
    let done = api.get(name).await?.status.and_then(|s| s.rollout);
    assert_eq!(done.map(|r| r.phase), Some(RolloutPhase::Promoted));
    let reasons = wait_for("the rollout's Events", WAIT, || async {
        let r = event_reasons(&client, &ns.name, name).await?;
        Ok((r.iter().filter(|r| *r == "RolloutStep").count() >= 2
            && r.iter().any(|r| r == "Promoted"))
        .then_some(r))
    })
    .await?;
    assert!(reasons.iter().any(|r| r == "Promoted"));
    ns.cleanup(&client).await
}

#[tokio::test]
async fn blue_green_promotes_by_itself_and_keeps_the_old_version_for_the_delay()
-> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "bluegreen").await?;
    let name = "switched";
    let rollout = json!({"strategy": "BlueGreen", "blueGreen": {
        "preview": {"model": model(name, "v2")?},
        "autoPromoteAfterSeconds": 3, "scaleDownDelaySeconds": 6}});
    let nodes = create(&client, &ns.name, name, rollout).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let key = (ns.name.as_str(), name);
    // The switch: v2 takes everything while v1 stays loaded, unrouted ...
    wait_for_split(&client, key, nodes, "v2", Some(100), WAIT).await?;
    let retained: Vec<(bool, i32)> = pipelines_of(&client, &ns.name, name, "v1")
        .await?
        .iter()
        .map(|p| (p.ready, p.weight))
        .collect();
    assert_eq!(
        retained,
        vec![(true, 0); nodes],
        "v1 kept loaded for the scale-down delay"
    );
    let status = api.get(name).await?.status.unwrap_or_default();
    assert_eq!(
        status.traffic.and_then(|t| t.retained_version).as_deref(),
        Some("v1")
    );
    // ... until the delay is over.
    wait_for_split(&client, key, nodes, "v1", None, WAIT).await?;
    let reasons = event_reasons(&client, &ns.name, name).await?;
    assert!(reasons.iter().any(|r| r == "Promoted"), "{reasons:?}");
    ns.cleanup(&client).await
}

#[tokio::test]
async fn a_canary_the_nodes_cannot_hold_next_to_stable_waits_and_says_why() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "toobig").await?;
    let name = "toobig";
    let real = std::env::var("GOGRID_MODEL_MINILM")
        .context("GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors")?;
    let big = big_model(&real)?;
    let canary = json!({"name": name, "version": "v2", "format": "safetensors", "task": "embedding",
                        "source": {"path": big}});
    let rollout = json!({"strategy": "Canary", "canary": {"model": canary,
        "steps": [{"weight": 50, "pauseSeconds": 0}, {"weight": 80, "pauseSeconds": 0}]}});
    let nodes = create(&client, &ns.name, name, rollout).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let message = wait_for("Degraded=True, reason InsufficientVram", WAIT, || async {
        let status = api.get(name).await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "InsufficientVram")
            .map(|c| c.message))
    })
    .await?;
    assert!(
        message.contains("cannot hold v2 next to v1: refused"),
        "{message}"
    );
    assert!(
        message.contains("needs") && message.contains("budget"),
        "{message}"
    );
    assert!(message.contains("the rollout waits"), "{message}");
    // The split in force is the one really routed: v1 takes everything
    // wherever v2 could not load, and says so.
    let key = (ns.name.as_str(), name);
    wait_for_split(&client, key, nodes, "v1", Some(100), WAIT).await?;
    let refused = pipelines_of(&client, &ns.name, name, "v2").await?;
    assert_eq!(refused.len(), nodes);
    assert!(
        refused
            .iter()
            .all(|p| !p.ready && p.weight == 0 && p.reason.as_deref() == Some("InsufficientVram")),
        "{refused:?}"
    );
    // The steps hold at the first one.
    let rollout = api
        .get(name)
        .await?
        .status
        .and_then(|s| s.rollout)
        .context("rollout")?;
    assert_eq!(
        (rollout.phase, rollout.step),
        (RolloutPhase::Canary, Some(0))
    );
    assert!(
        rollout
            .message
            .unwrap_or_default()
            .contains("waiting for it to be ready"),
        "the rollout says it waits"
    );
    ns.cleanup(&client).await
}
