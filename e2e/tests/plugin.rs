//! `kubectl gogrid` on a real control plane, found by kubectl's own plugin
//! lookup: `set-weight` changes the split every agent routes by, `status`
//! prints the versions, weights and each node's view, `abort` sends nothing to
//! the canary, `promote` makes the canary the model and the old version is
//! unloaded everywhere; a bad weight is refused with the reason.

use std::time::Duration;

use anyhow::Context as _;
use gogrid_crds::InferenceDeployment;
use gogrid_e2e::{TestNamespace, agent_nodes, client, kubectl_gogrid, wait_for, wait_for_split};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(300);
const NAME: &str = "embed";

fn normalised(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn the_kubectl_plugin_shows_and_drives_a_canary() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "plugin").await?;
    let path = std::env::var("GOGRID_MODEL_MINILM")
        .context("GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors")?;
    let nodes = agent_nodes(&client, "default").await?.len();
    anyhow::ensure!(nodes > 0, "no agents of the default profile");
    let model = |version: &str| {
        json!({"name": NAME, "version": version, "format": "safetensors", "task": "embedding",
               "source": {"path": path}})
    };
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": NAME},
            "spec": {"profile": "default", "model": model("v1"),
                     "rollout": {"strategy": "Canary", "canary": {"weight": 10, "model": model("v2")}}}
        }))?,
    )
    .await?;
    let key = (ns.name.as_str(), NAME);
    wait_for_split(&client, key, nodes, "v2", Some(10), WAIT).await?;

    // set-weight: the spec, then every agent's split in force.
    kubectl_gogrid(&["set-weight", NAME, "30", "-n", &ns.name])?
        .check("kubectl gogrid set-weight")?;
    let spec_weight = api
        .get(NAME)
        .await?
        .spec
        .rollout
        .and_then(|r| r.canary)
        .map(|c| c.weight);
    assert_eq!(spec_weight, Some(30));
    wait_for_split(&client, key, nodes, "v2", Some(30), WAIT).await?;
    wait_for_split(&client, key, nodes, "v1", Some(70), WAIT).await?;

    // status: the versions with their weights and ready nodes, one row per node and version.
    let status = wait_for(
        "kubectl gogrid status showing the new split",
        WAIT,
        || async {
            let out = kubectl_gogrid(&["status", NAME, "-n", &ns.name])?
                .check("kubectl gogrid status")?;
            let lines = normalised(&out.stdout);
            let ok = lines.contains(&format!("v1 stable 70% {nodes}/{nodes}"))
                && lines.contains(&format!("v2 canary 30% {nodes}/{nodes}"));
            Ok(ok.then_some(lines))
        },
    )
    .await?;
    let node_rows = status.iter().filter(|l| l.contains(" v2 yes 30% ")).count();
    assert_eq!(
        node_rows,
        nodes,
        "one ready v2 row per node:\n{}",
        status.join("\n")
    );

    // A weight out of range is refused, and nothing changes.
    let bad = kubectl_gogrid(&["set-weight", NAME, "101", "-n", &ns.name])?;
    assert!(!bad.ok);
    assert!(bad.stderr.contains("between 0 and 100"), "{}", bad.stderr);

    // abort: nothing to the canary.
    kubectl_gogrid(&["abort", NAME, "-n", &ns.name])?.check("kubectl gogrid abort")?;
    wait_for_split(&client, key, nodes, "v1", Some(100), WAIT).await?;

    // promote: v2 becomes the model, the rollout ends, v1 is unloaded everywhere.
    kubectl_gogrid(&["promote", NAME, "-n", &ns.name])?.check("kubectl gogrid promote")?;
    let d = api.get(NAME).await?;
    assert_eq!(d.spec.model.version, "v2");
    assert!(d.spec.rollout.is_none());
    wait_for_split(&client, key, nodes, "v2", Some(100), WAIT).await?;
    wait_for_split(&client, key, nodes, "v1", None, WAIT).await?;

    ns.cleanup(&client).await
}
