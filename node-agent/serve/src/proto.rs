//! Types and service stubs generated from `proto/grpc_predict_v2.proto` (package `inference`).
#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

tonic::include_proto!("inference");
