//! Restarts of the operator and of kube-apiserver during a test: everything
//! converges again with no manual step.

use std::time::Duration;

use gogrid_crds::{InferenceDeployment, ResourceProfile, ResourceProfileSpec};
use gogrid_e2e::{TestNamespace, client, ctl, is_local_harness, release_namespace, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn work_submitted_while_the_operator_and_the_api_server_restart_converges()
-> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: restarts processes of the local harness");
        return Ok(());
    }
    let client = client().await?;
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &release_namespace());

    // The operator is down while a profile is created.
    ctl(&["stop", "operator"])?;
    profiles
        .create(
            &PostParams::default(),
            &ResourceProfile::new("e2e-restart", ResourceProfileSpec::default()),
        )
        .await?;
    ctl(&["start", "operator"])?;
    wait_for(
        "the DaemonSet of a profile created while the operator was down",
        WAIT,
        || async { Ok(daemonsets.get_opt("gogrid-agent-e2e-restart").await?) },
    )
    .await?;

    // kube-apiserver restarts; the operator's watches recover by themselves.
    ctl(&["restart", "apiserver"])?;
    let client = client_again().await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    let result = deploy_after_restart(&client, &ns.name).await;
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    profiles
        .delete("e2e-restart", &DeleteParams::default())
        .await?;
    ns.cleanup(&client).await?;
    result
}

async fn deploy_after_restart(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);
    let d: InferenceDeployment = serde_json::from_value(json!({
        "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
        "metadata": {"name": "after-restart"},
        "spec": {"profile": "default", "model": {"name": "m", "format": "gguf", "task": "text-generation", "source": {"path": "/models/m.gguf"}}}
    }))?;
    api.create(&PostParams::default(), &d).await?;
    wait_for(
        "status written after the API server restart",
        WAIT,
        || async {
            let d = api.get("after-restart").await?;
            Ok(d.status
                .filter(|s| s.observed_generation == Some(1) && s.traffic.is_some()))
        },
    )
    .await?;
    Ok(())
}

async fn client_again() -> anyhow::Result<kube::Client> {
    wait_for("the API server answering again", WAIT, || async {
        let c = client().await?;
        c.apiserver_version().await?;
        Ok(Some(c))
    })
    .await
}
