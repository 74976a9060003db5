//! Time-driven rollouts on a real control plane with real agents: canary
//! steps advance by themselves and promote, and a blue-green preview is
//! promoted by itself, the previous version staying loaded for the
//! scale-down delay before it is unloaded; each move is an Event.

use std::time::Duration;

use anyhow::Context as _;
use gogrid_crds::inference_deployment::RolloutPhase;
use gogrid_crds::{GpuNode, InferenceDeployment};
use gogrid_e2e::{TestNamespace, agent_nodes, client, wait_for};
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

/// (ready, weight) of `version` as each GpuNode reports it, for the nodes that report it.
async fn reported(
    gpunodes: &Api<GpuNode>,
    ns: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<Vec<(bool, i32)>> {
    Ok(gpunodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|g| {
            let p = g.status.as_ref()?.pipeline(ns, name, version)?;
            Some((p.ready, p.weight))
        })
        .collect())
}

async fn every_agent(
    gpunodes: &Api<GpuNode>,
    (ns, name): (&str, &str),
    nodes: usize,
    version: &str,
    want: Option<(bool, i32)>,
) -> anyhow::Result<()> {
    let what = match want {
        Some((_, w)) => format!("every agent reporting {version} ready at {w}%"),
        None => format!("{version} unloaded on every agent"),
    };
    wait_for(&what, WAIT, || async {
        let r = reported(gpunodes, ns, name, version).await?;
        let ok = match want {
            Some(w) => r.len() == nodes && r.iter().all(|p| *p == w),
            None => r.is_empty(),
        };
        Ok(ok.then_some(()))
    })
    .await
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
    let nodes = agent_nodes(&client, "default").await?.len();
    anyhow::ensure!(nodes > 0, "no agents of the default profile");
    let name = "stepped";
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name},
            "spec": {"profile": "default", "model": model(name, "v1")?,
                     "rollout": {"strategy": "Canary", "canary": {"model": model(name, "v2")?,
                        "steps": [{"weight": 20, "pauseSeconds": 4}, {"weight": 60, "pauseSeconds": 4}]}}}
        }))?,
    )
    .await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let key = (ns.name.as_str(), name);
    every_agent(&gpunodes, key, nodes, "v2", Some((true, 20))).await?;
    every_agent(&gpunodes, key, nodes, "v2", Some((true, 60))).await?;
    let step = api.get(name).await?.status.and_then(|s| s.rollout);
    assert_eq!(step.as_ref().and_then(|r| r.step), Some(1), "{step:?}");
    // After the last step's pause the canary takes everything and v1 goes.
    every_agent(&gpunodes, key, nodes, "v2", Some((true, 100))).await?;
    every_agent(&gpunodes, key, nodes, "v1", None).await?;
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
    let nodes = agent_nodes(&client, "default").await?.len();
    anyhow::ensure!(nodes > 0, "no agents of the default profile");
    let name = "switched";
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name},
            "spec": {"profile": "default", "model": model(name, "v1")?,
                     "rollout": {"strategy": "BlueGreen", "blueGreen": {
                        "preview": {"model": model(name, "v2")?},
                        "autoPromoteAfterSeconds": 3, "scaleDownDelaySeconds": 6}}}
        }))?,
    )
    .await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let key = (ns.name.as_str(), name);
    // The switch: v2 takes everything while v1 stays loaded, unrouted ...
    every_agent(&gpunodes, key, nodes, "v2", Some((true, 100))).await?;
    let retained = reported(&gpunodes, &ns.name, name, "v1").await?;
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
    every_agent(&gpunodes, key, nodes, "v1", None).await?;
    let reasons = event_reasons(&client, &ns.name, name).await?;
    assert!(reasons.iter().any(|r| r == "Promoted"), "{reasons:?}");
    ns.cleanup(&client).await
}
