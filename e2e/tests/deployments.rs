//! InferenceDeployments on a real control plane: placement packed by the
//! budgets the agents report (and a clear condition when nothing fits), main
//! and preview Services without selector, printer columns, the transition rule
//! on model.name, and deletion that removes everything the deployment owned.

use std::time::Duration;

use gogrid_crds::InferenceDeployment;
use gogrid_crds::conditions;
use gogrid_e2e::{TestNamespace, client, kubectl, wait_for};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn deployment(name: &str, replicas: i32, vram: &str) -> anyhow::Result<InferenceDeployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "profile": "default",
            "placement": {"replicas": replicas},
            "resources": {"vram": vram},
            "model": {"name": "smollm2", "version": "v1", "format": "gguf", "task": "text-generation",
                      "source": {"path": "/models/smollm2.gguf"}},
            "rollout": {"strategy": "Canary", "canary": {
                "weight": 10,
                "model": {"name": "smollm2", "version": "v2", "format": "gguf", "task": "text-generation",
                          "source": {"path": "/models/smollm2-v2.gguf"}}}}
        }
    }))?)
}

async fn settled(
    api: &Api<InferenceDeployment>,
    name: &str,
) -> anyhow::Result<InferenceDeployment> {
    wait_for(
        &format!("{name} status for its generation"),
        WAIT,
        || async {
            let d = api.get(name).await?;
            let done = d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation && s.traffic.is_some()
            });
            Ok(done.then_some(d))
        },
    )
    .await
}

async fn budgets_reported(client: &kube::Client) -> anyhow::Result<()> {
    let gpunodes: Api<gogrid_crds::GpuNode> = Api::all(client.clone());
    wait_for(
        "three agents of the default profile reporting budgets",
        WAIT,
        || async {
            let n = gpunodes
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|g| {
                    g.status.as_ref().is_some_and(|s| {
                        s.profile.as_deref() == Some("default")
                            && s.budget.as_ref().is_some_and(|b| b.vram_budget_bytes > 0)
                    })
                })
                .count();
            Ok((n >= 3).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn deployments_are_packed_by_the_reported_budgets_and_say_when_nothing_fits()
-> anyhow::Result<()> {
    let client = client().await?;
    budgets_reported(&client).await?;
    let ns = TestNamespace::create(&client, "place").await?;
    let result = packing(&client, &ns.name).await;
    ns.cleanup(&client).await?;
    result
}

async fn packing(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);

    // Each node offers 2 x 70% x 24Gi = 33.6Gi. `first` takes 20Gi on two nodes;
    // `second` then fits only on the third node.
    api.create(&PostParams::default(), &deployment("first", 2, "20Gi")?)
        .await?;
    let first = wait_for("first placed on two nodes", WAIT, || async {
        let d = settled(&api, "first").await?;
        Ok((d.status.as_ref().is_some_and(|s| s.placement.len() == 2)).then_some(d))
    })
    .await?;
    let first_nodes: Vec<String> = first
        .status
        .clone()
        .unwrap_or_default()
        .placement
        .into_iter()
        .map(|p| p.node)
        .collect();

    api.create(&PostParams::default(), &deployment("second", 2, "20Gi")?)
        .await?;
    let second = wait_for("second placed on the one node with room", WAIT, || async {
        let d = settled(&api, "second").await?;
        let s = d.status.clone().unwrap_or_default();
        Ok((s.placement.len() == 1).then_some(s))
    })
    .await?;
    assert!(
        !first_nodes.contains(&second.placement[0].node),
        "second avoids the nodes first fills: {first_nodes:?} vs {:?}",
        second.placement
    );
    let degraded = conditions::find(&second.conditions, conditions::DEGRADED)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no Degraded condition"))?;
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InsufficientCapacity")
    );
    assert!(
        degraded.message.contains("placed on 1 of 2 nodes") && degraded.message.contains("20.0Gi"),
        "{}",
        degraded.message
    );

    // Nothing fits anywhere.
    api.create(&PostParams::default(), &deployment("huge", 1, "100Gi")?)
        .await?;
    let huge = wait_for("huge refused by every node", WAIT, || async {
        let s = settled(&api, "huge").await?.status.unwrap_or_default();
        Ok(conditions::find(&s.conditions, conditions::READY)
            .filter(|c| c.reason == "NoNodes")
            .map(|_| s.clone()))
    })
    .await?;
    assert!(huge.placement.is_empty());
    assert!(conditions::is_true(&huge.conditions, conditions::DEGRADED));

    // The traffic split in force and the printer columns.
    let split = first.status.and_then(|s| s.traffic).unwrap_or_default();
    assert_eq!(
        (
            split.stable_version.as_str(),
            split.canary_version.as_deref(),
            split.canary_weight
        ),
        ("v1", Some("v2"), 10)
    );
    let table = kubectl(&["get", "infd", "first", "-n", ns])?
        .check("kubectl get infd")?
        .stdout;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for col in ["READY", "PLACED", "STABLE", "CANARY", "WEIGHT", "PHASE"] {
        assert!(header.contains(&col), "column {col} missing: {table}");
    }
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(header.iter().position(|c| *c == "WEIGHT").unwrap_or(0)),
        Some(&"10"),
        "{table}"
    );
    assert_eq!(
        row.get(header.iter().position(|c| *c == "PHASE").unwrap_or(0)),
        Some(&"Canary"),
        "{table}"
    );
    Ok(())
}

#[tokio::test]
async fn services_follow_the_rollout_and_deleting_the_deployment_removes_them() -> anyhow::Result<()>
{
    let client = client().await?;
    let ns = TestNamespace::create(&client, "svc").await?;
    let result = services_and_cleanup(&client, &ns.name).await;
    ns.cleanup(&client).await?;
    result
}

async fn services_and_cleanup(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);

    let mut d = deployment("chat", 1, "1Gi")?;
    d.spec.rollout = Some(serde_json::from_value(json!({
        "strategy": "BlueGreen",
        "blueGreen": {"preview": {"model": {"name": "smollm2", "version": "v2", "format": "gguf", "task": "text-generation", "source": {"path": "/models/v2.gguf"}}}}
    }))?);
    api.create(&PostParams::default(), &d).await?;
    let main = wait_for("Service chat", WAIT, || async {
        Ok(services.get_opt("chat").await?)
    })
    .await?;
    let spec = main.spec.unwrap_or_default();
    assert_eq!(
        spec.selector, None,
        "the operator manages the endpoints, not a selector"
    );
    let ports: Vec<(String, i32)> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert!(
        ports.contains(&("http".into(), 8000)) && ports.contains(&("grpc".into(), 8001)),
        "{ports:?}"
    );
    wait_for("Service chat-preview during blue-green", WAIT, || async {
        Ok(services.get_opt("chat-preview").await?)
    })
    .await?;
    wait_for(
        "an EndpointSlice for chat pointing at its agent",
        WAIT,
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=chat"))
                .await?
                .items;
            Ok(list.into_iter().find(|s| !s.endpoints.is_empty()))
        },
    )
    .await?;
    // A client resolves the Service through its EndpointSlice and reaches a live
    // agent at the pod IP (inside the node's network namespace).
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=chat"))
        .await?
        .items
        .into_iter()
        .find(|s| !s.endpoints.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the EndpointSlice went away"))?;
    let address = slice.endpoints[0].addresses[0].clone();
    let port = slice
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .and_then(|p| p.port)
        .ok_or_else(|| anyhow::anyhow!("no metrics port in the slice"))?;
    if gogrid_e2e::is_local_harness() {
        let url = format!("http://{address}:{port}/healthz");
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", &url])
            .output()?;
        assert!(
            out.status.success(),
            "the agent behind the Service answers at {url}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    }
    let phase = settled(&api, "chat")
        .await?
        .status
        .and_then(|s| s.rollout)
        .map(|r| r.phase.as_str().to_owned());
    assert_eq!(phase.as_deref(), Some("Preview"));

    // model.name is immutable (a CEL transition rule).
    let rename = json!({"spec": {"model": {"name": "renamed"}}});
    let err = api
        .patch("chat", &PatchParams::default(), &Patch::Merge(&rename))
        .await
        .expect_err("rename refused");
    assert!(err.to_string().contains("model.name is immutable"), "{err}");

    // Promote: the preview Service goes away, all traffic to v2.
    let promote = json!({"spec": {"rollout": {"blueGreen": {"promote": true}}}});
    api.patch("chat", &PatchParams::default(), &Patch::Merge(&promote))
        .await?;
    wait_for("chat-preview removed after promotion", WAIT, || async {
        Ok(services
            .get_opt("chat-preview")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let split = settled(&api, "chat")
        .await?
        .status
        .and_then(|s| s.traffic)
        .unwrap_or_default();
    assert_eq!(split.stable_version, "v2");

    // Deleting the deployment deletes what it owned.
    api.delete("chat", &DeleteParams::foreground()).await?;
    wait_for(
        "Services and EndpointSlices of chat garbage-collected",
        WAIT,
        || async {
            let gone = services.get_opt("chat").await?.is_none()
                && slices
                    .list(&ListParams::default().labels("gogrid.io/deployment=chat"))
                    .await?
                    .items
                    .is_empty();
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}
