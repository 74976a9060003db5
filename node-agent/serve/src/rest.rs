//! The Open Inference Protocol v2 over REST (axum): health, metadata and infer routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, body::Bytes};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::error::{Result, ServeError};
use crate::metrics::Protocol;
use crate::registry::ModelVersion;
use crate::state::ServeState;
use crate::{infer, json, openai};

/// The REST router: OIP v2 under `/v2`, OpenAI-style under `/v1`. The agent may
/// merge its own routes (`/metrics`, `/healthz`) into it.
pub fn router(state: ServeState) -> Router {
    let limit = state.limits().max_request_bytes;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{name}/infer", post(model_infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        )
        .merge(openai::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn no_route(uri: Uri) -> ServeError {
    ServeError::NotFound(format!("no route {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    let body = json!({ "error": format!("method {method} is not allowed on {}", uri.path()) });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<ServeState>) -> Response {
    if state.registry().all_ready() {
        Json(json!({ "ready": true })).into_response()
    } else {
        ServeError::Unavailable("not every model has a ready version".into()).into_response()
    }
}

async fn server_metadata(State(state): State<ServeState>) -> Json<Value> {
    Json(json!({
        "name": state.server_name(),
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn model_metadata(State(state): State<ServeState>, Path(name): Path<String>) -> Response {
    respond(metadata(&state, &name, None))
}

async fn version_metadata(
    State(state): State<ServeState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    respond(metadata(&state, &name, Some(&version)))
}

/// The model's metadata: of the named version, or of the version an
/// unversioned request would get (the last added one while none is ready).
pub(crate) fn metadata(state: &ServeState, name: &str, version: Option<&str>) -> Result<Value> {
    let versions = state.registry().versions(name)?;
    let entry = match version {
        Some(version) => state.registry().version(name, version)?,
        None => match state.registry().resolve(name, None) {
            Ok(entry) => entry,
            Err(_) => versions
                .last()
                .cloned()
                .ok_or_else(|| ServeError::NotFound(format!("unknown model {name:?}")))?,
        },
    };
    let meta = entry.metadata();
    let tensors = |list: &[crate::backend::TensorMeta]| -> Vec<Value> {
        list.iter()
            .map(|t| json!({ "name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape }))
            .collect()
    };
    Ok(json!({
        "name": name,
        "versions": versions.iter().map(|v| v.version()).collect::<Vec<_>>(),
        "platform": meta.platform,
        "inputs": tensors(&meta.inputs),
        "outputs": tensors(&meta.outputs),
    }))
}

async fn model_ready(State(state): State<ServeState>, Path(name): Path<String>) -> Response {
    respond(readiness(&state, &name, None))
}

async fn version_ready(
    State(state): State<ServeState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    respond(readiness(&state, &name, Some(&version)))
}

/// 200 when ready, 404 for unknown models or versions, 503 while not ready.
fn readiness(state: &ServeState, name: &str, version: Option<&str>) -> Result<Value> {
    let entry = state.registry().resolve(name, version)?;
    Ok(json!({ "name": name, "version": entry.version(), "ready": true }))
}

async fn model_infer(
    State(state): State<ServeState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(state, name, None, headers, body).await
}

async fn version_infer(
    State(state): State<ServeState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(state, name, Some(version), headers, body).await
}

async fn run_infer(
    state: ServeState,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let tracker = state.begin(Protocol::Rest, &name, version.as_deref());
    let span = tracker.span();
    async move {
        let entry: Arc<ModelVersion> = match state.registry().resolve(&name, version.as_deref()) {
            Ok(entry) => entry,
            Err(error) => {
                tracker.finish(None, Some(&error));
                return error.into_response();
            }
        };
        let outcome = async {
            let body = read_body(body, state.limits().max_request_bytes)?;
            let (json_part, binary_part) = split_binary(&headers, &body)?;
            let request = json::decode_infer_request_parts(json_part, binary_part)?;
            let binary = BinaryOutputs::of(&request);
            Ok((infer::run(&entry, request).await?, binary))
        }
        .await;
        match outcome {
            Ok((response, binary)) => {
                tracker.finish(Some(&entry), None);
                if binary.any() {
                    let (header, raw) =
                        json::encode_infer_response_parts(&response, &|name| binary.wants(name));
                    binary_response(&header, raw)
                } else {
                    Json(json::encode_infer_response(&response)).into_response()
                }
            }
            Err(error) => {
                tracker.finish(Some(&entry), Some(&error));
                error.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The header of the binary tensor data extension: the JSON part's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The JSON part and, with the binary extension's header, the binary part of a
/// request body. The header's length is checked against the body, never
/// trusted for an allocation.
fn split_binary<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], Option<&'a [u8]>)> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, None));
    };
    let text = value.to_str().unwrap_or_default();
    let length: usize = text.trim().parse().map_err(|_| {
        ServeError::invalid(format!(
            "header Inference-Header-Content-Length: {text:?} is not a length in bytes"
        ))
    })?;
    if length > body.len() {
        return Err(ServeError::invalid(format!(
            "header Inference-Header-Content-Length: {length} is longer than the body ({} bytes)",
            body.len()
        )));
    }
    let (json_part, binary) = body.split_at(length);
    Ok((json_part, Some(binary)))
}

/// Which outputs a request wants in the binary part: all of them
/// (`parameters.binary_data_output`), or those it names with
/// `outputs[].parameters.binary_data`.
struct BinaryOutputs {
    all: bool,
    named: Vec<String>,
}

impl BinaryOutputs {
    fn of(request: &infer::InferRequest) -> Self {
        let yes = |p: &crate::tensor::Parameters, key: &str| {
            matches!(p.get(key), Some(crate::tensor::ParamValue::Bool(true)))
        };
        Self {
            all: yes(&request.parameters, "binary_data_output"),
            named: request
                .outputs
                .iter()
                .filter(|o| yes(&o.parameters, "binary_data"))
                .map(|o| o.name.clone())
                .collect(),
        }
    }

    fn any(&self) -> bool {
        self.all || !self.named.is_empty()
    }

    fn wants(&self, name: &str) -> bool {
        self.all || self.named.iter().any(|n| n == name)
    }
}

/// A response in the binary extension's form: the JSON part, then the raw
/// outputs, with the JSON part's length in `Inference-Header-Content-Length`.
fn binary_response(header: &Value, raw: Vec<u8>) -> Response {
    let mut body = serde_json::to_vec(header).unwrap_or_default();
    let length = body.len();
    body.extend_from_slice(&raw);
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static(HEADER_LENGTH),
                length.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

/// The body, or a 413 naming the limit / a 400 saying why it could not be read.
pub(crate) fn read_body(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::PayloadTooLarge(format!(
                "request body is larger than the limit of {limit} bytes"
            ))
        } else {
            ServeError::invalid(format!("cannot read the request body: {rejection}"))
        }
    })
}

fn respond(result: Result<Value>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}
