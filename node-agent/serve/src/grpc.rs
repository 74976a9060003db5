//! The Open Inference Protocol v2 over gRPC (tonic): `inference.GRPCInferenceService`.

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::convert::{request_from_proto, response_to_proto};
use crate::error::ServeError;
use crate::infer;
use crate::metrics::Protocol;
use crate::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::proto::model_metadata_response::TensorMetadata;
use crate::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use crate::state::ServeState;

/// The gRPC service over a [`ServeState`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    state: ServeState,
}

/// The tonic service with message size limits from the state's [`crate::Limits`]
/// (decode and encode), ready to add to a `tonic::transport::Server`.
pub fn grpc_service(state: ServeState) -> GrpcInferenceServiceServer<GrpcService> {
    let limit = state.limits().max_grpc_message_bytes;
    GrpcInferenceServiceServer::new(GrpcService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

fn version_of(version: &str) -> Option<&str> {
    Some(version).filter(|v| !v.is_empty())
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.registry().all_ready();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let registry = self.state.registry();
        let ready = match registry.resolve(&request.name, version_of(&request.version)) {
            Ok(_) => true,
            Err(ServeError::Unavailable(_)) => false,
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: self.state.server_name().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let registry = self.state.registry();
        let versions = registry.versions(&request.name)?;
        let entry = match version_of(&request.version) {
            Some(version) => registry.version(&request.name, version)?,
            None => match registry.resolve(&request.name, None) {
                Ok(entry) => entry,
                Err(error) => versions.last().cloned().ok_or(error)?,
            },
        };
        let meta = entry.metadata();
        let tensors = |list: &[crate::backend::TensorMeta]| {
            list.iter()
                .map(|t| TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype.as_str().to_owned(),
                    shape: t.shape.clone(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: request.name,
            versions: versions.iter().map(|v| v.version().to_owned()).collect(),
            platform: meta.platform.clone(),
            inputs: tensors(&meta.inputs),
            outputs: tensors(&meta.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = deadline_of(request.metadata());
        let request = request.into_inner();
        let model = request.model_name.clone();
        let version = version_of(&request.model_version).map(str::to_owned);
        let tracker = self.state.begin(Protocol::Grpc, &model, version.as_deref());
        let span = tracker.span();
        let work = async {
            let entry = match self.state.registry().resolve(&model, version.as_deref()) {
                Ok(entry) => entry,
                Err(error) => {
                    tracker.finish(None, Some(&error));
                    return Err(error.into());
                }
            };
            let outcome = match request_from_proto(request) {
                Ok(typed) => infer::run(&entry, typed).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(response) => {
                    tracker.finish(Some(&entry), None);
                    Ok(Response::new(response_to_proto(response)))
                }
                Err(error) => {
                    tracker.finish(Some(&entry), Some(&error));
                    Err(error.into())
                }
            }
        };
        match deadline {
            None => work.instrument(span).await,
            // The client's grpc-timeout, answered DEADLINE_EXCEEDED a moment
            // before tonic's own timer would cut the call as CANCELLED.
            Some(d) => match tokio::time::timeout(d.saturating_sub(DEADLINE_MARGIN), work)
                .instrument(span)
                .await
            {
                Ok(result) => result,
                Err(_) => Err(ServeError::DeadlineExceeded(format!(
                    "the request's deadline ({} ms) passed before model {model} answered",
                    d.as_millis()
                ))
                .into()),
            },
        }
    }
}

/// How much sooner than the client's deadline the server gives up.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(1);

/// The client's `grpc-timeout` (`<digits><unit>`, units H M S m u n).
fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Recorder, open_context};
    use crate::proto::{InferTensorContents, model_infer_request::InferInputTensor};
    use crate::{BatchPolicy, Limits, Registry};
    use std::sync::Arc;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let parse = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            deadline_of(&m)
        };
        assert_eq!(parse("2S"), Some(std::time::Duration::from_secs(2)));
        assert_eq!(parse("150m"), Some(std::time::Duration::from_millis(150)));
        assert_eq!(parse("1H"), Some(std::time::Duration::from_secs(3600)));
        assert_eq!(parse("7n"), Some(std::time::Duration::from_nanos(7)));
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
    }

    /// The request reaches the service as tonic hands it over (a tonic
    /// client would time the call out locally first and never see the
    /// server's answer).
    #[tokio::test]
    async fn a_deadline_that_passes_while_the_model_works_is_deadline_exceeded() {
        let (backend, _started, _release) = Recorder::gated(8);
        let (ctx, _policy) = open_context(BatchPolicy::default());
        let registry = Arc::new(Registry::new(ctx.policy, ctx.admission, ctx.metrics));
        registry.add("m", "1", backend).expect("added");
        registry.set_ready("m", "1", true).expect("ready");
        let service = GrpcService {
            state: ServeState::new(registry, Limits::default()),
        };
        let input = InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(InferTensorContents {
                bytes_contents: vec![b"a".to_vec()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut request = Request::new(ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input],
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("grpc-timeout", "30m".parse().expect("ascii"));
        let status = service.model_infer(request).await.expect_err("too late");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("deadline (30 ms)"), "{status:?}");
    }
}
