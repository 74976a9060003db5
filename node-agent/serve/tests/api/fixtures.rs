//! Fake backends, a throttling admission, the servers under test and a small HTTP client.

use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gogrid_serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gogrid_serve::{
    Admission, Backend, BatchPolicy, DataType, FinishReason, GenerateParams, Generation, Limits,
    Metrics, ModelMetadata, Permit, Registry, Rejection, Result, ServeState, TaskKind, Tensor,
    TensorMeta, TokenSink, serve_grpc, serve_http,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The REST body limit of the servers under test.
pub const BODY_LIMIT: usize = 64 * 1024;

fn meta(inputs: Vec<TensorMeta>, outputs: Vec<TensorMeta>, max_batch_size: usize) -> ModelMetadata {
    ModelMetadata {
        platform: "fake".into(),
        inputs,
        outputs,
        max_batch_size,
    }
}

/// Embeds text `t` as `[len(t), number of 'a' in t, 1]`.
pub struct Embedder(ModelMetadata);

impl Embedder {
    fn new() -> Self {
        Self(meta(
            vec![TensorMeta::new("text", DataType::Bytes, vec![-1])],
            vec![TensorMeta::new("embedding", DataType::F32, vec![-1, 3])],
            8,
        ))
    }
}

impl Backend for Embedder {
    fn metadata(&self) -> &ModelMetadata {
        &self.0
    }

    fn task(&self) -> TaskKind {
        TaskKind::Embedding
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| vec![t.len() as f32, t.matches('a').count() as f32, 1.0])
            .collect())
    }
}

/// Generates `tok0 `, `tok1 `, … up to `max_tokens`, stopping before a piece
/// that equals a stop sequence. Optionally holds each generation until released.
pub struct Generator {
    meta: ModelMetadata,
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl Generator {
    fn new() -> Self {
        Self {
            meta: meta(
                vec![TensorMeta::new("text_input", DataType::Bytes, vec![1])],
                vec![TensorMeta::new("text_output", DataType::Bytes, vec![1])],
                0,
            ),
            gate: Mutex::new(None),
        }
    }

    /// A generator whose first generation signals `started` after its first
    /// token and then waits for `release`.
    pub fn gated() -> (Self, Receiver<()>, Sender<()>) {
        let generator = Self::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        if let Ok(mut gate) = generator.gate.lock() {
            *gate = Some((started_tx, release_rx));
        }
        (generator, started_rx, release_tx)
    }
}

impl Backend for Generator {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn task(&self) -> TaskKind {
        TaskKind::TextGeneration
    }

    fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut TokenSink<'_>,
    ) -> Result<Generation> {
        let gate = self.gate.lock().ok().and_then(|mut g| g.take());
        let prompt_tokens = prompt.split_whitespace().count();
        for i in 0..params.max_tokens {
            let piece = format!("tok{i} ");
            if params.stop.iter().any(|s| piece.trim() == s) {
                return Ok(Generation {
                    prompt_tokens,
                    completion_tokens: i,
                    finish_reason: FinishReason::Stop,
                });
            }
            if on_token(&piece) == ControlFlow::Break(()) {
                return Ok(Generation {
                    prompt_tokens,
                    completion_tokens: i + 1,
                    finish_reason: FinishReason::Cancelled,
                });
            }
            if let (0, Some((started, release))) = (i, &gate) {
                let _ = started.send(());
                let _ = release.recv();
            }
        }
        Ok(Generation {
            prompt_tokens,
            completion_tokens: params.max_tokens,
            finish_reason: FinishReason::Length,
        })
    }
}

/// Returns its inputs as outputs, renamed `OUTPUT<i>`.
pub struct Identity(ModelMetadata);

impl Identity {
    fn new(inputs: Vec<TensorMeta>) -> Self {
        Self(meta(inputs, Vec::new(), 8))
    }
}

impl Backend for Identity {
    fn metadata(&self) -> &ModelMetadata {
        &self.0
    }

    fn task(&self) -> TaskKind {
        TaskKind::Tensor
    }

    fn infer(&self, batch: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
        Ok(batch
            .iter()
            .map(|inputs| {
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Tensor {
                        name: format!("OUTPUT{i}"),
                        ..t.clone()
                    })
                    .collect()
            })
            .collect())
    }
}

/// Throttles model `busy` (retry after 3 s) and refuses model `refused`.
pub struct Policy;

impl Admission for Policy {
    fn admit(
        &self,
        model: &str,
        _version: &str,
        _rows: usize,
    ) -> std::result::Result<Permit, Rejection> {
        match model {
            "busy" => Err(Rejection::Throttled {
                retry_after: Duration::from_secs(3),
            }),
            "refused" => Err(Rejection::Refused {
                reason: "model refused: over the VRAM budget".into(),
            }),
            _ => Ok(Permit::free()),
        }
    }
}

/// Both servers, with these models: `embed`/1, `gen`/1, `identity`/1 and /2
/// (unversioned requests get 2), `strict`/1 (declares `INPUT0 INT32 [-1, 2]`),
/// `loading`/1 (not ready), `busy`/1 (throttled), `refused`/1 (refused),
/// `slow`/1 (a gated generator).
pub struct Servers {
    pub http: Http,
    pub grpc_addr: std::net::SocketAddr,
    pub registry: Arc<Registry>,
    pub prometheus: prometheus_client::registry::Registry,
    shutdown: Option<oneshot::Sender<()>>,
    pub http_task: JoinHandle<std::io::Result<()>>,
    grpc_task: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    pub slow_started: Receiver<()>,
    pub slow_release: Sender<()>,
}

fn add(registry: &Registry, model: &str, version: &str, backend: Arc<dyn Backend>, ready: bool) {
    registry.add(model, version, backend).expect("model added");
    registry
        .set_ready(model, version, ready)
        .expect("model known");
}

/// Starts both servers on 127.0.0.1 ephemeral ports.
pub async fn start() -> Servers {
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut prometheus);
    let policy = BatchPolicy {
        max_queue_delay: Duration::from_millis(1),
        ..BatchPolicy::default()
    };
    // The policy never changes here: the receiver keeps the last value after the sender goes.
    let (_, policy_rx) = tokio::sync::watch::channel(policy);
    let registry = Arc::new(Registry::new(policy_rx, Arc::new(Policy), metrics));
    let strict = vec![TensorMeta::new("INPUT0", DataType::I32, vec![-1, 2])];
    let (slow, slow_started, slow_release) = Generator::gated();
    add(&registry, "embed", "1", Arc::new(Embedder::new()), true);
    add(&registry, "gen", "1", Arc::new(Generator::new()), true);
    add(
        &registry,
        "identity",
        "1",
        Arc::new(Identity::new(Vec::new())),
        true,
    );
    add(
        &registry,
        "identity",
        "2",
        Arc::new(Identity::new(Vec::new())),
        true,
    );
    add(
        &registry,
        "strict",
        "1",
        Arc::new(Identity::new(strict)),
        true,
    );
    add(
        &registry,
        "loading",
        "1",
        Arc::new(Identity::new(Vec::new())),
        false,
    );
    add(
        &registry,
        "busy",
        "1",
        Arc::new(Identity::new(Vec::new())),
        true,
    );
    add(
        &registry,
        "refused",
        "1",
        Arc::new(Identity::new(Vec::new())),
        true,
    );
    add(&registry, "slow", "1", Arc::new(slow), true);
    let limits = Limits {
        max_request_bytes: BODY_LIMIT,
        max_grpc_message_bytes: BODY_LIMIT,
    };
    let state = ServeState::new(registry.clone(), limits);

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let shutdown = futures::future::FutureExt::shared(async move {
        let _ = shutdown_rx.await;
    });
    let http_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let grpc_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let http_addr = http_listener.local_addr().expect("http addr");
    let grpc_addr = grpc_listener.local_addr().expect("grpc addr");
    let http_task = tokio::spawn(serve_http(http_listener, state.clone(), shutdown.clone()));
    let grpc_task = tokio::spawn(serve_grpc(grpc_listener, state, shutdown));
    Servers {
        http: Http::new(format!("http://{http_addr}")),
        grpc_addr,
        registry,
        prometheus,
        shutdown: Some(shutdown_tx),
        http_task,
        grpc_task,
        slow_started,
        slow_release,
    }
}

impl Servers {
    /// A gRPC client of the server under test.
    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("grpc connects")
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// Asks both servers to shut down gracefully.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the gRPC server to end.
    pub async fn grpc_stopped(self) {
        assert!(matches!(self.grpc_task.await, Ok(Ok(()))));
    }

    /// The Prometheus text exposition of the serving metrics.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.prometheus).expect("encodes");
        text
    }
}

/// A REST answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` message of an error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no error in {:?}", self.json()))
    }
}

/// A plain HTTP/1 client of the REST server.
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new(base: String) -> Self {
        Self {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request and returns the response head with the body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request builds");
        self.client.request(request).await.expect("server answers")
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let response = self.send(method, path, body, headers).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body reads")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Vec::new(), &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, body.to_string().into_bytes(), &[])
            .await
    }

    /// `POST path` with raw bytes.
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> Reply {
        self.call(Method::POST, path, body.to_vec(), &[]).await
    }
}
