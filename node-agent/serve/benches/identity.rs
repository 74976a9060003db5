//! Benchmarks of the serving path with the identity model: JSON and protobuf
//! decoding, and a whole REST inference (decode, queue, batch, encode) without sockets.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use gogrid_serve::convert::{request_from_proto, response_to_proto};
use gogrid_serve::json::decode_infer_request;
use gogrid_serve::proto::ModelInferRequest;
use gogrid_serve::proto::model_infer_request::InferInputTensor;
use gogrid_serve::testing::Identity;
use gogrid_serve::{
    AdmitAll, BatchPolicy, InferResponse, Limits, Metrics, Registry, ServeState, TensorData, router,
};
use http::Request;
use tower::ServiceExt;

const ELEMENTS: usize = 1024;

fn json_body() -> Vec<u8> {
    let data: Vec<f32> = (0..ELEMENTS).map(|i| i as f32 * 0.5).collect();
    serde_json::json!({"inputs": [{"name": "x", "shape": [1, ELEMENTS], "datatype": "FP32", "data": data}]})
        .to_string()
        .into_bytes()
}

fn proto_request() -> ModelInferRequest {
    let data = TensorData::F32((0..ELEMENTS).map(|i| i as f32).collect());
    ModelInferRequest {
        model_name: "identity".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, ELEMENTS as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![data.to_raw()],
        ..Default::default()
    }
}

fn decoding(c: &mut Criterion) {
    let body = json_body();
    c.bench_function("json_decode_fp32_1024", |b| {
        b.iter(|| decode_infer_request(black_box(&body)))
    });
    let request = proto_request();
    c.bench_function("proto_convert_fp32_1024", |b| {
        b.iter(|| {
            let typed = request_from_proto(black_box(request.clone())).expect("valid");
            response_to_proto(InferResponse {
                model_name: "identity".into(),
                model_version: "1".into(),
                id: typed.id,
                parameters: typed.parameters,
                outputs: typed.inputs,
            })
        })
    });
}

fn rest_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let policy = BatchPolicy {
        max_queue_delay: Duration::ZERO,
        ..BatchPolicy::default()
    };
    let (_policy_tx, policy_rx) = tokio::sync::watch::channel(policy);
    let registry = Arc::new(Registry::new(
        policy_rx,
        Arc::new(AdmitAll),
        Metrics::unregistered(),
    ));
    registry
        .add("identity", "1", Arc::new(Identity::new(8)))
        .expect("added");
    registry.set_ready("identity", "1", true).expect("known");
    let app = router(ServeState::new(registry, Limits::default()));
    let body = json_body();
    c.bench_function("rest_identity_infer_fp32_1024", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let request = Request::post("/v2/models/identity/infer")
                    .body(Body::from(body.clone()))
                    .expect("request");
                let response = app.clone().oneshot(request).await.expect("infallible");
                assert!(response.status().is_success());
                axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("body")
            })
        })
    });
}

criterion_group!(benches, decoding, rest_round_trip);
criterion_main!(benches);
