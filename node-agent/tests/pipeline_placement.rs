//! Placement of a model's layers over a node's GPUs, through the node core the
//! agent runs (declared GPUs: their stages compute on the CPU device, the
//! budgets and the ledger are the GPUs'): `pipeline.gpusPerReplica` splits the
//! layers over that many GPUs in proportion to their room, explicit
//! `pipeline.stages` are honoured in order, an impossible placement is refused
//! with the field named, and a model split over two GPUs generates exactly the
//! text it generates on one.

#[path = "../pipeline/tests/common/tiny.rs"]
#[allow(dead_code)]
mod tiny;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gogrid_agent::gpu::Inventory;
use gogrid_agent::gpu::declared::Declared;
use gogrid_agent::metrics::Metrics;
use gogrid_agent::node;
use gogrid_agent::sync::deployments::{DeploymentKey, Desired};
use gogrid_crds::Preset;
use gogrid_crds::gpu_node::PipelineStatus;
use gogrid_crds::inference_deployment::InferenceDeploymentSpec;
use gogrid_crds::policy::preset_policy;
use gogrid_runtime::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn tiny_model() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gogrid-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tiny.gguf");
    tiny::TinyLlama {
        layers: 6,
        ..Default::default()
    }
    .write(&path);
    path
}

fn deployment(name: &str, model: &std::path::Path, pipeline: &str) -> Desired {
    let yaml = format!(
        "profile: test\nmodel: {{name: {name}, version: v1, format: gguf, task: text-generation, source: {{path: {}}}}}\n{pipeline}",
        model.display()
    );
    let spec: InferenceDeploymentSpec = serde_yaml::from_str(&yaml).expect("spec");
    Desired::from_spec(
        DeploymentKey {
            namespace: "test".into(),
            name: name.into(),
        },
        spec,
    )
}

async fn settled(rx: &mut watch::Receiver<Vec<PipelineStatus>>, n: usize) -> Vec<PipelineStatus> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let all = rx.borrow_and_update();
                if all.len() == n && all.iter().all(|p| p.ready || p.message.is_some()) {
                    return all.clone();
                }
            }
            rx.changed().await.expect("node core alive");
        }
    })
    .await
    .expect("pipelines settle within 60 s")
}

/// POST `body` to `path` over HTTP/1.1 and return the response body.
async fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn completion_text(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON completion");
    v["choices"][0]["text"]
        .as_str()
        .expect("choices[0].text")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_placed_over_the_gpus_the_spec_asks_for() {
    let model = tiny_model();
    let desired = vec![
        deployment("one", &model, ""),
        deployment("two", &model, "pipeline: {gpusPerReplica: 2}"),
        deployment(
            "explicit",
            &model,
            "pipeline: {stages: [{gpu: 2, firstLayer: 0, lastLayer: 1}, {gpu: 0, firstLayer: 2, lastLayer: 5}]}",
        ),
        deployment("too-many", &model, "pipeline: {gpusPerReplica: 4}"),
        deployment(
            "no-such-gpu",
            &model,
            "pipeline: {stages: [{gpu: 7, firstLayer: 0, lastLayer: 5}]}",
        ),
    ];
    let (_policy_tx, policy_rx) = watch::channel(Some(preset_policy(Preset::Aggressive)));
    let (_desired_tx, desired_rx) = watch::channel(desired);
    let inventory: Arc<dyn Inventory> = Arc::new(Declared::parse("3x1Gi").expect("inventory"));
    let (outputs, reports) = node::Outputs::channel(inventory.as_ref());
    let mut pipelines_rx = reports.pipelines;
    let listen = node::Listen {
        http: free_port(),
        grpc: free_port(),
        after: None,
    };
    let shutdown = Shutdown::default();
    let core = tokio::spawn(node::run(
        node::Inputs {
            inventory,
            policy: policy_rx,
            desired: desired_rx,
            stats_every: std::time::Duration::from_secs(10),
            hollow: false,
        },
        Some(listen.clone()),
        Arc::new(Metrics::default()),
        outputs,
        shutdown.clone(),
    ));

    let all = settled(&mut pipelines_rx, 5).await;
    let by_name = |n: &str| {
        all.iter()
            .find(|p| p.deployment == n)
            .unwrap_or_else(|| panic!("status of {n}: {all:#?}"))
    };
    let layout = |n: &str| {
        by_name(n)
            .stages
            .iter()
            .map(|s| (s.gpu, s.first_layer, s.last_layer))
            .collect::<Vec<_>>()
    };

    // Default: one GPU, all layers.
    assert!(by_name("one").ready, "{:?}", by_name("one"));
    assert_eq!(layout("one").len(), 1);
    assert_eq!((layout("one")[0].1, layout("one")[0].2), (0, 5));
    // Two GPUs: the layers split between two distinct GPUs, in index order.
    assert!(by_name("two").ready, "{:?}", by_name("two"));
    let two = layout("two");
    assert_eq!(two.len(), 2, "{two:?}");
    assert!(two[0].0 < two[1].0, "{two:?}");
    assert_eq!((two[0].1, two[1].2), (0, 5));
    assert_eq!(two[0].2 + 1, two[1].1, "{two:?}");
    // Explicit stages, in the spec's order.
    assert!(by_name("explicit").ready, "{:?}", by_name("explicit"));
    assert_eq!(layout("explicit"), vec![(Some(2), 0, 1), (Some(0), 2, 5)]);
    // Impossible placements are refused, naming the field.
    let refused = |n: &str, field: &str| {
        let p = by_name(n);
        assert!(!p.ready, "{p:?}");
        let message = p.message.as_deref().unwrap_or_default();
        assert!(message.contains(field), "{n}: {message}");
    };
    refused(
        "too-many",
        "pipeline.gpusPerReplica is 4, but this node has 3 GPUs",
    );
    refused("no-such-gpu", "pipeline.stages names gpu 7");
    // Each stage's weights are held on its own GPU: the stages' bytes add up.
    for n in ["one", "two", "explicit"] {
        let p = by_name(n);
        let stages: i64 = p.stages.iter().map(|s| s.vram_bytes).sum();
        assert_eq!(p.vram_bytes, stages, "{p:?}");
    }

    // The split model computes what the whole one does.
    let mut texts = Vec::new();
    for model in ["one", "two", "explicit"] {
        let body =
            format!(r#"{{"model":"{model}","prompt":"the grid","max_tokens":12,"temperature":0}}"#);
        texts.push(completion_text(
            &post(listen.http, "/v1/completions", &body).await,
        ));
    }
    assert!(!texts[0].is_empty());
    assert_eq!(texts[0], texts[1], "two GPUs");
    assert_eq!(texts[0], texts[2], "explicit stages");

    shutdown.trigger();
    core.await.expect("join").expect("node core ends cleanly");
    let _ = std::fs::remove_dir_all(model.parent().expect("temp dir"));
}

/// A hollow node core (`gogrid-agent hollow`) reads no model and listens
/// nowhere, and reports each version ready on the device a real agent would
/// choose, and refuses what a real agent refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hollow_node_reports_versions_ready_without_reading_a_model() {
    let missing = std::path::Path::new("/nonexistent/gogrid/hollow.gguf");
    let desired = vec![
        deployment("hollow", missing, ""),
        deployment("too-many", missing, "pipeline: {gpusPerReplica: 4}"),
    ];
    let (_policy_tx, policy_rx) = watch::channel(Some(preset_policy(Preset::Aggressive)));
    let (_desired_tx, desired_rx) = watch::channel(desired);
    let inventory: Arc<dyn Inventory> = Arc::new(Declared::parse("3x1Gi").expect("inventory"));
    let (outputs, reports) = node::Outputs::channel(inventory.as_ref());
    let mut pipelines_rx = reports.pipelines;
    let shutdown = Shutdown::default();
    let core = tokio::spawn(node::run(
        node::Inputs {
            inventory,
            policy: policy_rx,
            desired: desired_rx,
            stats_every: Duration::from_secs(10),
            hollow: true,
        },
        None,
        Arc::new(Metrics::default()),
        outputs,
        shutdown.clone(),
    ));
    let all = settled(&mut pipelines_rx, 2).await;
    let hollow = all
        .iter()
        .find(|p| p.deployment == "hollow")
        .expect("hollow");
    assert!(hollow.ready, "{hollow:?}");
    assert_eq!(hollow.stages.len(), 1, "{hollow:?}");
    assert_eq!(hollow.stages[0].gpu, Some(0), "{hollow:?}");
    assert_eq!(hollow.vram_bytes, 0, "nothing is held: {hollow:?}");
    let refused = all
        .iter()
        .find(|p| p.deployment == "too-many")
        .expect("too-many");
    assert!(!refused.ready, "{refused:?}");
    assert!(
        refused
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("pipeline.gpusPerReplica is 4"),
        "{refused:?}"
    );
    shutdown.trigger();
    core.await.expect("join").expect("node core ends cleanly");
}
