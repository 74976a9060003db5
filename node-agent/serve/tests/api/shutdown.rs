//! Graceful shutdown: in-flight requests finish after the signal.

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::json;

use crate::fixtures::start;

#[tokio::test]
async fn shutdown_lets_an_in_flight_streamed_completion_finish() {
    let mut servers = start().await;
    let body = json!({"model": "slow", "prompt": "x", "max_tokens": 3, "stream": true});
    let response = servers
        .http
        .send(
            Method::POST,
            "/v1/completions",
            body.to_string().into_bytes(),
            &[],
        )
        .await;
    assert_eq!(response.status(), 200);
    let started = tokio::task::spawn_blocking({
        let started = std::mem::replace(&mut servers.slow_started, std::sync::mpsc::channel().1);
        move || started.recv().is_ok()
    });
    assert!(started.await.expect("joins"), "the generation is running");
    servers.shutdown();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !servers.http_task.is_finished(),
        "the REST server waits for the in-flight stream"
    );
    servers.slow_release.send(()).expect("generator waits");
    let raw = response
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("tok2 "), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let http_task = std::mem::replace(&mut servers.http_task, tokio::spawn(async { Ok(()) }));
    assert!(
        matches!(http_task.await, Ok(Ok(()))),
        "the REST server ends after the stream"
    );
    servers.grpc_stopped().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_grpc_call_finish() {
    use gogrid_serve::proto::model_infer_request::InferInputTensor;
    use gogrid_serve::proto::{InferTensorContents, ModelInferRequest};

    let mut servers = start().await;
    let mut client = servers.grpc().await;
    let prompt = InferTensorContents {
        bytes_contents: vec![b"x".to_vec()],
        ..Default::default()
    };
    let request = ModelInferRequest {
        model_name: "slow".into(),
        inputs: vec![InferInputTensor {
            name: "text_input".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(prompt),
            ..Default::default()
        }],
        ..Default::default()
    };
    let call = tokio::spawn(async move { client.model_infer(request).await });
    let started = std::mem::replace(&mut servers.slow_started, std::sync::mpsc::channel().1);
    let running = tokio::task::spawn_blocking(move || started.recv().is_ok());
    assert!(running.await.expect("joins"), "the generation is running");
    servers.shutdown();
    servers.slow_release.send(()).expect("generator waits");
    let reply = call
        .await
        .expect("joins")
        .expect("the call completes")
        .into_inner();
    assert_eq!(reply.model_name, "slow");
    servers.grpc_stopped().await;
}
