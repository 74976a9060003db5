//! GoGrid serving: the Open Inference Protocol v2 over REST and gRPC, OpenAI-style
//! endpoints, dynamic batching, and the traits through which the agent plugs in
//! models ([`Backend`]), its throttle policy ([`Admission`]) and its version
//! split ([`VersionSelector`]).
//!
//! ```text
//! REST (axum) ─┐                        ┌─ worker thread per model version
//! gRPC (tonic) ┼─ Registry::resolve ─► Queue ─► batch ─► Admission ─► Backend
//! OpenAI (axum)┘   (VersionSelector)    └─ answers fanned back through oneshots
//! ```

#![warn(missing_docs)]

mod admission;
mod backend;
mod batcher;
pub mod convert;
mod error;
#[cfg(test)]
mod fixtures;
mod grpc;
mod infer;
pub mod json;
mod metrics;
mod openai;
pub mod proto;
mod registry;
mod rest;
mod server;
mod state;
mod tensor;
pub mod testing;

pub use admission::{Admission, AdmitAll, Permit, Rejection};
pub use backend::{
    Backend, FinishReason, GenerateParams, Generation, ModelMetadata, TaskKind, TensorMeta,
    TokenSink,
};
pub use batcher::BatchPolicy;
pub use error::{Result, ServeError};
pub use grpc::{GrpcService, grpc_service};
pub use infer::{InferRequest, InferResponse, RequestedOutput};
pub use metrics::{Metrics, Protocol, UNKNOWN, VersionStats};
pub use registry::{LatestReady, ModelVersion, Registry, VersionSelector};
pub use rest::router;
pub use server::{serve_grpc, serve_http};
pub use state::{Limits, ServeState};
pub use tensor::{DataType, ParamValue, Parameters, Tensor, TensorData, element_count};
