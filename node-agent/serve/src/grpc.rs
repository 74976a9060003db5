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
        let request = request.into_inner();
        let model = request.model_name.clone();
        let version = version_of(&request.model_version).map(str::to_owned);
        let tracker = self.state.begin(Protocol::Grpc, &model, version.as_deref());
        let span = tracker.span();
        async {
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
        }
        .instrument(span)
        .await
    }
}
