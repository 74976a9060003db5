//! OpenAI-style REST: `GET /v1/models`, `POST /v1/embeddings`, `POST /v1/completions`
//! (with `stream: true` as server-sent events ending in `data: [DONE]`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::backend::{GenerateParams, Generation, TaskKind};
use crate::error::{Result, ServeError};
use crate::infer::{self, worker_gone};
use crate::metrics::Protocol;
use crate::registry::ModelVersion;
use crate::rest::read_body;
use crate::state::{ServeState, Tracker};

pub(crate) fn routes() -> Router<ServeState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/completions", post(completions))
}

async fn models(State(state): State<ServeState>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry()
        .list()
        .into_iter()
        .map(|(name, _)| json!({ "id": name, "object": "model", "created": 0, "owned_by": "gogrid" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    n: Option<u64>,
}

fn parse<T: DeserializeOwned>(
    state: &ServeState,
    body: std::result::Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T> {
    let body = read_body(body, state.limits().max_request_bytes)?;
    serde_json::from_slice(&body).map_err(|e| {
        ServeError::invalid(format!("request body is not a valid {what} request: {e}"))
    })
}

/// Parses the body, resolves the model and checks its task; failures are recorded
/// here and returned for the caller to answer.
fn open<T: DeserializeOwned>(
    state: &ServeState,
    body: std::result::Result<Bytes, BytesRejection>,
    what: &str,
    model_of: impl Fn(&T) -> &str,
    task: TaskKind,
) -> Result<(T, Arc<ModelVersion>, Tracker)> {
    let request: T = match parse(state, body, what) {
        Ok(request) => request,
        Err(error) => {
            state
                .begin(Protocol::Openai, "", None)
                .finish(None, Some(&error));
            return Err(error);
        }
    };
    let tracker = state.begin(Protocol::Openai, model_of(&request), None);
    let entry = state
        .registry()
        .resolve(model_of(&request), None)
        .and_then(|entry| {
            if entry.task() == task {
                Ok(entry)
            } else {
                Err(ServeError::invalid(format!(
                    "model: {} is a {:?} model and cannot serve {what} requests",
                    entry.model(),
                    entry.task()
                )))
            }
        });
    match entry {
        Ok(entry) => Ok((request, entry, tracker)),
        Err(error) => {
            tracker.finish(None, Some(&error));
            Err(error)
        }
    }
}

fn finish(tracker: &Tracker, entry: &ModelVersion, result: Result<Response>) -> Response {
    match result {
        Ok(response) => {
            tracker.finish(Some(entry), None);
            response
        }
        Err(error) => {
            tracker.finish(Some(entry), Some(&error));
            error.into_response()
        }
    }
}

async fn embeddings(
    State(state): State<ServeState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let (request, entry, tracker) = match open(
        &state,
        body,
        "embeddings",
        |r: &EmbeddingsRequest| &r.model,
        TaskKind::Embedding,
    ) {
        Ok(opened) => opened,
        Err(error) => return error.into_response(),
    };
    let span = tracker.span();
    let result = async {
        if let Some(format) = request.encoding_format.as_deref().filter(|f| *f != "float") {
            return Err(ServeError::unsupported(format!(
                "encoding_format: {format:?} is not supported (only \"float\")"
            )));
        }
        let texts = strings(&request.input, "input")?;
        let vectors = infer::embed_texts(&entry, texts).await?;
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
            .collect();
        let body = json!({ "object": "list", "data": data, "model": entry.model() });
        Ok(Json(body).into_response())
    }
    .instrument(span)
    .await;
    finish(&tracker, &entry, result)
}

/// A string or an array of strings.
fn strings(value: &Value, field: &str) -> Result<Vec<String>> {
    let bad = || ServeError::invalid(format!("{field}: expected a string or an array of strings"));
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "cmpl-{:x}-{:x}",
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn generate_params(request: &CompletionRequest) -> Result<(String, GenerateParams)> {
    if request.n.is_some_and(|n| n > 1) {
        return Err(ServeError::unsupported(
            "n: only one choice per request is supported",
        ));
    }
    let mut prompts = strings(&request.prompt, "prompt")?;
    if prompts.len() != 1 {
        return Err(ServeError::unsupported(format!(
            "prompt: {} prompts in one request are not supported; send one per request",
            prompts.len()
        )));
    }
    let prompt = prompts.pop().unwrap_or_default();
    let mut params = GenerateParams {
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        ..GenerateParams::default()
    };
    if let Some(max_tokens) = request.max_tokens {
        params.max_tokens = usize::try_from(max_tokens)
            .map_err(|_| ServeError::invalid(format!("max_tokens: {max_tokens} is too large")))?;
    }
    if let Some(stop) = &request.stop {
        params.stop = strings(stop, "stop")?;
    }
    Ok((prompt, params))
}

async fn completions(
    State(state): State<ServeState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let (request, entry, tracker) = match open(
        &state,
        body,
        "completions",
        |r: &CompletionRequest| &r.model,
        TaskKind::TextGeneration,
    ) {
        Ok(opened) => opened,
        Err(error) => return error.into_response(),
    };
    let started = generate_params(&request)
        .and_then(|(prompt, params)| infer::start_generation(&entry, prompt, params));
    let (mut tokens, answer) = match started {
        Ok(started) => started,
        Err(error) => return finish(&tracker, &entry, Err(error)),
    };
    let stream = Completion {
        id: completion_id(),
        created: unix_now(),
        entry: entry.clone(),
        tracker,
    };
    if request.stream {
        return Sse::new(stream.events(tokens, answer)).into_response();
    }
    let span = stream.tracker.span();
    let result = async {
        let mut text = String::new();
        while let Some(piece) = tokens.recv().await {
            text.push_str(&piece);
        }
        let generation = answer.await.map_err(|_| worker_gone(&entry))??;
        Ok(Json(stream.body(&text, Some(&generation))).into_response())
    }
    .instrument(span)
    .await;
    finish(&stream.tracker, &entry, result)
}

/// One completion being answered.
struct Completion {
    id: String,
    created: u64,
    entry: Arc<ModelVersion>,
    tracker: Tracker,
}

impl Completion {
    /// A whole response (with usage) or, with `generation` `None`, one streamed chunk.
    fn body(&self, text: &str, generation: Option<&Generation>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.entry.model(),
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": generation.map(|g| g.finish_reason.as_str()),
            }],
        });
        if let Some(g) = generation {
            body["usage"] = json!({
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
                "total_tokens": g.prompt_tokens + g.completion_tokens,
            });
        }
        body
    }

    /// Token chunks in order, a last chunk with the finish reason, then `[DONE]`;
    /// a failure ends the stream with `{"error": ...}` instead.
    fn events(
        self,
        tokens: mpsc::UnboundedReceiver<String>,
        answer: oneshot::Receiver<Result<Generation>>,
    ) -> impl futures::Stream<Item = std::result::Result<Event, Infallible>> {
        enum Phase {
            Tokens(
                mpsc::UnboundedReceiver<String>,
                oneshot::Receiver<Result<Generation>>,
            ),
            Done,
            Closed,
        }
        futures::stream::unfold(
            (self, Phase::Tokens(tokens, answer)),
            |(this, phase)| async move {
                match phase {
                    Phase::Tokens(mut tokens, answer) => match tokens.recv().await {
                        Some(piece) => {
                            let chunk = this.chunk(&piece, None);
                            Some((
                                Ok(Event::default().data(chunk)),
                                (this, Phase::Tokens(tokens, answer)),
                            ))
                        }
                        None => {
                            match answer.await.map_err(|_| worker_gone(&this.entry)).flatten() {
                                Ok(generation) => {
                                    this.tracker.finish(Some(&this.entry), None);
                                    let chunk = this.chunk("", Some(&generation));
                                    Some((Ok(Event::default().data(chunk)), (this, Phase::Done)))
                                }
                                Err(error) => {
                                    this.tracker.finish(Some(&this.entry), Some(&error));
                                    let body = json!({ "error": error.to_string() }).to_string();
                                    Some((Ok(Event::default().data(body)), (this, Phase::Closed)))
                                }
                            }
                        }
                    },
                    Phase::Done => {
                        Some((Ok(Event::default().data("[DONE]")), (this, Phase::Closed)))
                    }
                    Phase::Closed => None,
                }
            },
        )
    }

    fn chunk(&self, text: &str, generation: Option<&Generation>) -> String {
        let mut body = self.body(text, generation);
        if let Some(obj) = body.as_object_mut() {
            obj.remove("usage");
        }
        body.to_string()
    }
}
