//! Serving on a real control plane with a real model: an InferenceDeployment of
//! all-MiniLM-L6-v2 becomes Ready on every node of its profile, its
//! EndpointSlices list exactly the agents that report it ready, and a client
//! that resolves the Service through them gets embeddings that match the
//! reference implementation's from every agent. A deployment whose checksum
//! does not match, and one larger than a node's VRAM budget, are refused on
//! each node with the reason in status, and the model already serving keeps
//! serving.

use std::time::Duration;

use anyhow::Context as _;
use gogrid_crds::{GpuNode, InferenceDeployment};
use gogrid_e2e::{
    TestNamespace, agent_nodes, big_model, client, kubectl, pipelines_of, repo_root, wait_for,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(300);
const MODEL: &str = "all-minilm-l6-v2";

fn model_path() -> anyhow::Result<String> {
    std::env::var("GOGRID_MODEL_MINILM").context(
        "GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors (make e2e sets it from hack/models.sh)",
    )
}

fn deployment(name: &str, path: &str, sha256: &str) -> anyhow::Result<InferenceDeployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "profile": "default",
            "model": {"name": name, "version": "v1", "format": "safetensors", "task": "embedding",
                      "sha256": sha256, "source": {"path": path}},
        }
    }))?)
}

fn reference() -> anyhow::Result<(Vec<String>, Vec<Vec<f64>>, String)> {
    let text = std::fs::read_to_string(
        repo_root().join("node-agent/pipeline/tests/reference/minilm.json"),
    )?;
    let v: Value = serde_json::from_str(&text)?;
    let sentences = serde_json::from_value(v["sentences"].clone())?;
    let embeddings = serde_json::from_value(v["embeddings"].clone())?;
    let sha = v["model_sha256"]
        .as_str()
        .context("model_sha256")?
        .to_owned();
    Ok((sentences, embeddings, sha))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// POST through curl: the test runs where the agents' pod IPs are routed.
fn infer(address: &str, port: i32, sentences: &[String]) -> anyhow::Result<Vec<Vec<f64>>> {
    let body = json!({"inputs": [{"name": "text", "shape": [sentences.len()], "datatype": "BYTES", "data": sentences}]});
    let url = format!("http://{address}:{port}/v2/models/{MODEL}/infer");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "60",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", &body.to_string(), &url])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let output = &v["outputs"][0];
    let dim = output["shape"][1].as_u64().context("shape [n, dim]")? as usize;
    let flat: Vec<f64> = serde_json::from_value(output["data"].clone())?;
    Ok(flat.chunks(dim).map(<[f64]>::to_vec).collect())
}

#[tokio::test]
async fn a_real_model_serves_correct_embeddings_from_every_ready_agent() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "serving").await?;
    let (sentences, expected, sha) = reference()?;
    let path = model_path()?;
    let nodes = agent_nodes(&client, "default").await?;
    anyhow::ensure!(!nodes.is_empty(), "no agents of the default profile");

    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(&PostParams::default(), &deployment(MODEL, &path, &sha)?)
        .await?;
    let ready = wait_for(
        "the deployment Ready on every node of its profile",
        WAIT,
        || async {
            let d = api.get(MODEL).await?;
            let s = d.status.unwrap_or_default();
            let ok = s.replicas as usize == nodes.len()
                && s.ready_replicas == s.replicas
                && gogrid_crds::conditions::is_true(&s.conditions, "Ready");
            Ok(ok.then_some(s))
        },
    )
    .await?;
    assert_eq!(ready.placement.len(), nodes.len());

    // The EndpointSlices list exactly the agents whose GpuNode reports the model ready.
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let reporting_ready: Vec<String> = gpunodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|g| {
            let s = g.status?;
            let p = s.pipeline(&ns.name, MODEL, "v1")?;
            p.ready.then(|| s.agent.map(|a| a.pod_ip)).flatten()
        })
        .collect();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    let selector = format!("kubernetes.io/service-name={MODEL}");
    let listed = slices
        .list(&ListParams::default().labels(&selector))
        .await?;
    let mut ready_addresses = Vec::new();
    let mut port = 0;
    for slice in &listed.items {
        for p in slice.ports.iter().flatten() {
            if p.name.as_deref() == Some("http") {
                port = p.port.unwrap_or(0);
            }
        }
        for e in &slice.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                ready_addresses.extend(e.addresses.iter().cloned());
            }
        }
    }
    let (mut a, mut b) = (ready_addresses.clone(), reporting_ready);
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "EndpointSlices list exactly the agents that report ready"
    );
    assert_eq!(a.len(), nodes.len());

    // Every agent behind the Service answers with the reference's embeddings.
    for address in &ready_addresses {
        let got = infer(address, port, &sentences)?;
        assert_eq!(
            got.len(),
            expected.len(),
            "{address}: one embedding per sentence"
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let c = cosine(g, e);
            assert!(c >= 0.999, "{address}: sentence {i} cosine {c} < 0.999");
        }
    }

    // Each agent reports what the version served: the requests just sent,
    // no server errors, and a latency summary.
    wait_for(
        "every agent reporting the requests it served in its GpuNode",
        WAIT,
        || async {
            let reported = pipelines_of(&client, &ns.name, MODEL, "v1").await?;
            let ok = reported.len() == nodes.len()
                && reported
                    .iter()
                    .all(|p| p.requests >= 1 && p.errors == 0 && p.latency.is_some());
            Ok(ok.then_some(()))
        },
    )
    .await?;

    // A checksum mismatch is refused on every node, with the reason in status.
    let bad = "bad-checksum";
    api.create(
        &PostParams::default(),
        &deployment(bad, &path, &"0".repeat(64))?,
    )
    .await?;
    wait_for(
        "every node refusing the bad checksum in its GpuNode",
        WAIT,
        || async {
            let refused = gpunodes
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|g| {
                    g.status
                        .as_ref()
                        .and_then(|s| s.pipeline(&ns.name, bad, "v1"))
                        .is_some_and(|p| {
                            !p.ready && p.message.as_deref().is_some_and(|m| m.contains("sha256"))
                        })
                })
                .count();
            Ok((refused == nodes.len()).then_some(()))
        },
    )
    .await?;
    // ... and the model already serving still answers.
    let again = infer(&ready_addresses[0], port, &sentences[..1])?;
    assert!(cosine(&again[0], &expected[0]) >= 0.999);

    // A model larger than a node's VRAM budget is refused on that node before
    // anything is read, naming what it needs and what each GPU offers (a
    // sparse 24 GB safetensors file: its header declares the tensor, the disk
    // holds nothing).
    let too_big = "too-big";
    let big = big_model(&path)?;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": too_big},
            "spec": {
                "profile": "default",
                "model": {"name": too_big, "version": "v1", "format": "safetensors",
                          "task": "embedding", "source": {"path": big.display().to_string()}},
            }
        }))?,
    )
    .await?;
    let messages = wait_for(
        "every node refusing the model larger than its budget",
        WAIT,
        || async {
            let refused: Vec<String> = gpunodes
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|g| {
                    let p = g.status.as_ref()?.pipeline(&ns.name, too_big, "v1")?;
                    (!p.ready).then(|| p.message.clone()).flatten()
                })
                .filter(|m| m.contains("needs"))
                .collect();
            Ok((refused.len() == nodes.len()).then_some(refused))
        },
    )
    .await?;
    for m in &messages {
        assert!(
            m.contains("refused: model needs 22.4Gi, devices offer gpu")
                && m.ends_with("Gi (the room left in the VRAM budget)"),
            "the refusal names the need, the GPU and its budget: {m}"
        );
    }
    // `kubectl describe` tells a person what happened, in words: the
    // Degraded condition and a Warning Event naming the need and the budget.
    let described = wait_for(
        "kubectl describe showing the refusal as a condition and an Event",
        WAIT,
        || async {
            let out = kubectl(&["describe", "infd", too_big, "-n", &ns.name])?
                .check("kubectl describe")?;
            let events = out
                .stdout
                .split("Events:")
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            Ok(
                (events.contains("Warning") && events.contains("InsufficientVram"))
                    .then_some(out.stdout),
            )
        },
    )
    .await?;
    eprintln!("kubectl describe infd {too_big}:\n{described}");
    assert!(
        described.contains("cannot") || described.contains("needs 22.4Gi"),
        "the condition says why in words: {described}"
    );
    let conditions = described.split("Events:").next().unwrap_or_default();
    assert!(
        conditions.contains("Degraded") && conditions.contains("InsufficientVram"),
        "the Degraded condition carries the reason: {conditions}"
    );

    // The first model still serves.
    let again = infer(&ready_addresses[0], port, &sentences[..1])?;
    assert!(cosine(&again[0], &expected[0]) >= 0.999);
    let _ = std::fs::remove_dir_all(big.parent().unwrap_or(&big));

    ns.cleanup(&client).await
}
