//! GoGrid's servers in the bench: the overhead they add to a forward, and a
//! server to put load on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gogrid_agent::pipeline::backend::ModelBackend;
use gogrid_pipeline::Loaded;
use gogrid_serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gogrid_serve::proto::model_infer_request::InferInputTensor;
use gogrid_serve::proto::{InferTensorContents, ModelInferRequest};
use gogrid_serve::testing::Identity;
use gogrid_serve::{
    AdmitAll, Backend, BatchPolicy, Limits, Metrics, Registry, ServeState, serve_grpc, serve_http,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engine::{MinilmInputs, check_threads, load_minilm};
use crate::load::HttpClient;
use crate::stats::{latency_ms, quantile, sorted};

/// A registry with one model under `policy`, admitting everything (the
/// policy gate is measured by its own benchmarks).
/// The policy sender comes back with it: keep it while serving.
fn registry(
    name: &str,
    backend: Arc<dyn Backend>,
    policy: BatchPolicy,
) -> anyhow::Result<(Arc<Registry>, watch::Sender<BatchPolicy>)> {
    let (tx, rx) = watch::channel(policy);
    let registry = Arc::new(Registry::new(
        rx,
        Arc::new(AdmitAll),
        Metrics::unregistered(),
    ));
    registry.add(name, "1", backend)?;
    registry.set_ready(name, "1", true)?;
    Ok((registry, tx))
}

async fn start(
    state: ServeState,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    let listener = TcpListener::bind(http)
        .await
        .with_context(|| format!("binding {http}"))?;
    let http = listener.local_addr()?;
    tokio::spawn(serve_http(listener, state.clone(), std::future::pending()));
    let grpc = match grpc {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let addr = listener.local_addr()?;
            tokio::spawn(serve_grpc(listener, state, std::future::pending()));
            Some(addr)
        }
        None => None,
    };
    Ok((http, grpc))
}

/// The body of a batch-1 MiniLM request over REST.
pub fn minilm_body(text: &str) -> String {
    json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})
        .to_string()
}

#[derive(clap::Args, Debug)]
pub struct OverheadArgs {
    /// `identity` (the forward costs next to nothing: what is measured is the
    /// server), or MiniLM's model.safetensors (the 8-token text).
    #[arg(long)]
    model: String,
    /// bench/peers/minilm_inputs.json
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 1000)]
    iters: usize,
}

/// The body of a batch-1 identity request over REST: 64 FP32 values.
pub fn identity_body() -> String {
    let data: Vec<f32> = (0..64u8).map(|i| f32::from(i) * 0.5).collect();
    json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// Direct forward, REST and gRPC in turn, one request at a time: the server's
/// share is the difference.
pub fn overhead(a: &OverheadArgs) -> anyhow::Result<Value> {
    check_threads(a.threads)?;
    let inputs = MinilmInputs::read(&a.inputs)?;
    let identity = a.model == "identity";
    let embedder = if identity {
        None
    } else {
        Some(load_minilm(std::path::Path::new(&a.model))?)
    };
    let backend: Arc<dyn Backend> = match &embedder {
        None => Arc::new(Identity::new(1)),
        Some(e) => Arc::new(ModelBackend::new(Loaded::Embedder(e.clone()))),
    };
    let body = bytes::Bytes::from(if identity {
        identity_body()
    } else {
        minilm_body(&inputs.text_8)
    });
    // The direct forward takes what the server hands the model: the decoded
    // tensors (identity), the text (MiniLM).
    let decoded = gogrid_serve::json::decode_infer_request(&body)?.inputs;
    let forward = || -> anyhow::Result<()> {
        match &embedder {
            None => {
                std::hint::black_box(backend.infer(std::slice::from_ref(&decoded))?);
            }
            Some(e) => {
                std::hint::black_box(e.embed(&[&inputs.text_8])?);
            }
        }
        Ok(())
    };
    let grpc_input = if identity {
        InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 64],
            contents: Some(InferTensorContents {
                fp32_contents: (0..64u8).map(|i| f32::from(i) * 0.5).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    } else {
        InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(InferTensorContents {
                bytes_contents: vec![inputs.text_8.clone().into_bytes()],
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let name = if identity { "identity" } else { "minilm" };
    let policy = BatchPolicy {
        max_batch_size: 1,
        max_queue_delay: Duration::ZERO,
        ..BatchPolicy::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (registry, _policy) = registry(name, backend.clone(), policy)?;
    let state = ServeState::new(registry, Limits::default());
    let (http, grpc) = runtime.block_on(start(
        state,
        "127.0.0.1:0".parse()?,
        Some("127.0.0.1:0".parse()?),
    ))?;
    let grpc = grpc.context("gRPC address")?;
    let path = format!("/v2/models/{name}/infer");
    let mut rest = runtime.block_on(HttpClient::connect(http))?;
    let mut grpc_client = runtime.block_on(GrpcInferenceServiceClient::connect(format!(
        "http://{grpc}"
    )))?;
    let grpc_request = ModelInferRequest {
        model_name: name.into(),
        inputs: vec![grpc_input],
        ..Default::default()
    };
    let (mut direct, mut via_rest, mut via_grpc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.iters + 20 {
        let t = Instant::now();
        forward()?;
        let d = t.elapsed();
        let t = Instant::now();
        let status = runtime.block_on(rest.post(&path, body.clone()))?;
        let r = t.elapsed();
        anyhow::ensure!(status == 200, "REST answered {status}");
        let t = Instant::now();
        runtime.block_on(grpc_client.model_infer(grpc_request.clone()))?;
        let g = t.elapsed();
        // The first 20 rounds warm the connections and caches.
        if i >= 20 {
            direct.push(d);
            via_rest.push(r);
            via_grpc.push(g);
        }
    }
    // The server's share per round: each request minus the direct forward of
    // the same round (paired, so that slow drift of the machine cancels).
    let added = |via: &[Duration]| {
        let diffs = sorted(
            via.iter()
                .zip(&direct)
                .map(|(v, d)| (v.as_secs_f64() - d.as_secs_f64()) * 1e6)
                .collect(),
        );
        json!({"p50": quantile(&diffs, 0.5), "p99": quantile(&diffs, 0.99)})
    };
    Ok(json!({
        "engine": "gogrid",
        "model": if identity { "identity, 64 FP32 values, batch 1" } else { "all-MiniLM-L6-v2, batch 1, 8 tokens" },
        "threads": a.threads,
        "direct_ms": latency_ms(&direct),
        "rest_ms": latency_ms(&via_rest),
        "grpc_ms": latency_ms(&via_grpc),
        "rest_added_us": added(&via_rest),
        "grpc_added_us": added(&via_grpc),
    }))
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// `identity`, or the path of MiniLM's model.safetensors.
    #[arg(long)]
    model: String,
    /// The name clients address (`identity`, `minilm`).
    #[arg(long, default_value = "identity")]
    name: String,
    #[arg(long, default_value = "127.0.0.1:8000")]
    http: SocketAddr,
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Rows per batch (1: batching off).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a batch waits for more requests.
    #[arg(long, default_value_t = 2)]
    delay_ms: u64,
    /// Tokio worker threads (the model runs on its own worker thread).
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// Serves until killed.
pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    let backend: Arc<dyn Backend> = if a.model == "identity" {
        Arc::new(Identity::new(a.max_batch))
    } else {
        Arc::new(ModelBackend::new(Loaded::Embedder(load_minilm(
            std::path::Path::new(&a.model),
        )?)))
    };
    let policy = BatchPolicy {
        max_batch_size: a.max_batch,
        max_queue_delay: Duration::from_millis(a.delay_ms),
        max_queue_depth: 4096,
        ..BatchPolicy::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.workers)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (registry, _policy) = registry(&a.name, backend, policy)?;
        let state = ServeState::new(registry, Limits::default());
        let (http, grpc) = start(state, a.http, a.grpc).await?;
        eprintln!(
            "gogrid-bench serve: {} ready on http://{http} grpc {grpc:?}",
            a.name
        );
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}
