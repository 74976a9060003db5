//! The Open Inference Protocol over REST: health, metadata, inference and every bad-input case.

use serde_json::{Value, json};

use crate::fixtures::{BODY_LIMIT, Reply, Servers, start};

fn bytes_input(texts: &[&str]) -> Value {
    json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]})
}

#[tokio::test]
async fn liveness_server_metadata_and_readiness_follow_the_models() {
    let servers = start().await;
    let live = servers.http.get("/v2/health/live").await;
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    let meta = servers.http.get("/v2").await.json();
    assert_eq!(meta["name"], "gogrid");
    let ready = servers.http.get("/v2/health/ready").await;
    assert_eq!(ready.status, 503, "model `loading` is not ready yet");
    servers
        .registry
        .set_ready("loading", "1", true)
        .expect("known");
    assert_eq!(servers.http.get("/v2/health/ready").await.status, 200);
}

#[tokio::test]
async fn model_metadata_lists_versions_platform_and_tensors() {
    let servers = start().await;
    let meta = servers.http.get("/v2/models/embed").await;
    assert_eq!(meta.status, 200);
    assert_eq!(
        meta.json(),
        json!({
            "name": "embed", "versions": ["1"], "platform": "fake",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 3]}],
        })
    );
    let versioned = servers
        .http
        .get("/v2/models/identity/versions/1")
        .await
        .json();
    assert_eq!(versioned["versions"], json!(["1", "2"]));
    assert_eq!(servers.http.get("/v2/models/nope").await.status, 404);
    assert_eq!(
        servers
            .http
            .get("/v2/models/identity/versions/9")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn model_readiness_is_200_when_ready_503_while_loading_and_404_when_unknown() {
    let servers = start().await;
    assert_eq!(servers.http.get("/v2/models/embed/ready").await.status, 200);
    assert_eq!(
        servers
            .http
            .get("/v2/models/identity/versions/1/ready")
            .await
            .status,
        200
    );
    let loading = servers.http.get("/v2/models/loading/ready").await;
    assert_eq!(loading.status, 503);
    assert_eq!(loading.error(), "model loading has no ready version");
    assert_eq!(servers.http.get("/v2/models/nope/ready").await.status, 404);
}

#[tokio::test]
async fn an_embedding_request_returns_one_fp32_row_per_text_and_echoes_the_id() {
    let servers = start().await;
    let mut body = bytes_input(&["abc", "aa"]);
    body["id"] = json!("req-7");
    let reply = servers.http.post("/v2/models/embed/infer", &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(
        reply.json(),
        json!({
            "model_name": "embed", "model_version": "1", "id": "req-7",
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [2, 3],
                         "data": [3.0, 1.0, 1.0, 2.0, 2.0, 1.0]}],
        })
    );
}

#[tokio::test]
async fn a_versioned_path_picks_that_version_and_an_unversioned_one_the_selector_choice() {
    let servers = start().await;
    let body = json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]});
    let v1 = servers
        .http
        .post("/v2/models/identity/versions/1/infer", &body)
        .await
        .json();
    assert_eq!(v1["model_version"], "1");
    assert_eq!(v1["outputs"][0]["data"], json!([1, 2, 3, 4]));
    assert_eq!(v1["outputs"][0]["shape"], json!([2, 2]));
    let latest = servers
        .http
        .post("/v2/models/identity/infer", &body)
        .await
        .json();
    assert_eq!(latest["model_version"], "2");
}

#[tokio::test]
async fn a_generation_request_returns_text_output_and_the_finish_reason() {
    let servers = start().await;
    let body = json!({
        "parameters": {"max_tokens": 3, "temperature": 0.5},
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hello"]}],
    });
    let reply = servers.http.post("/v2/models/gen/infer", &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["outputs"][0]["name"], "text_output");
    assert_eq!(json["outputs"][0]["data"], json!(["tok0 tok1 tok2 "]));
    assert_eq!(json["parameters"]["finish_reason"], "length");
}

#[tokio::test]
async fn requested_outputs_are_filtered_and_an_unknown_one_is_named() {
    let servers = start().await;
    let mut body = json!({"inputs": [
        {"name": "a", "shape": [1], "datatype": "FP32", "data": [1.5]},
        {"name": "b", "shape": [1], "datatype": "BOOL", "data": [true]},
    ]});
    body["outputs"] = json!([{"name": "OUTPUT1"}]);
    let reply = servers
        .http
        .post("/v2/models/identity/infer", &body)
        .await
        .json();
    assert_eq!(
        reply["outputs"],
        json!([{"name": "OUTPUT1", "datatype": "BOOL", "shape": [1], "data": [true]}])
    );
    body["outputs"] = json!([{"name": "missing"}]);
    let reply = servers.http.post("/v2/models/identity/infer", &body).await;
    assert_eq!(
        (reply.status, reply.error()),
        (400, "outputs[0]: unknown output \"missing\"".to_owned())
    );
}

#[tokio::test]
async fn bad_requests_get_a_4xx_that_names_the_problem() {
    let servers = start().await;
    let http = &servers.http;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v2/models/embed/infer", b"{not json".to_vec(), 400, "request body is not a valid inference request"),
        ("/v2/models/embed/infer",
         json!({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(),
         400, "text: datatype FP32, expected BYTES"),
        ("/v2/models/embed/infer",
         json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}).to_string().into_bytes(),
         400, "inputs[0].data: shape [3] needs 3 elements but data has 1"),
        ("/v2/models/embed/infer", bytes_input(&[]).to_string().into_bytes(), 400, "input: empty batch"),
        ("/v2/models/embed/infer",
         bytes_input(&["a"; 9]).to_string().into_bytes(), 400, "batch of 9 rows exceeds the max batch size 8"),
        ("/v2/models/identity/infer", json!({"inputs": []}).to_string().into_bytes(), 400, "inputs: empty"),
        ("/v2/models/strict/infer",
         json!({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}).to_string().into_bytes(),
         400, "INPUT0: shape [1, 3] does not match the declared shape [-1, 2]"),
        ("/v2/models/strict/infer",
         json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}).to_string().into_bytes(),
         400, "INPUT0: datatype INT64, expected INT32"),
        ("/v2/models/nope/infer", bytes_input(&["a"]).to_string().into_bytes(), 404, "unknown model \"nope\""),
        ("/v2/models/embed/versions/9/infer", bytes_input(&["a"]).to_string().into_bytes(), 404,
         "model \"embed\" has no version \"9\""),
        ("/v2/models/loading/infer", bytes_input(&["a"]).to_string().into_bytes(), 503, "model loading has no ready version"),
        ("/v2/models/refused/infer",
         json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(),
         503, "model refused: over the VRAM budget"),
        ("/v2/models/embed/infer", vec![b' '; BODY_LIMIT + 1], 413, "larger than the limit of 65536 bytes"),
        ("/v2/models/embed/infer",
         format!(r#"{{"inputs":[{{"name":"text","shape":[1],"datatype":"BYTES","data":{}"a"{}}}]}}"#, "[".repeat(1000), "]".repeat(1000)).into_bytes(),
         400, "recursion limit exceeded"),
        ("/v2/models/identity/infer",
         json!({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(),
         400, "inputs[0].shape: negative dimension -1"),
        ("/v2/models/identity/infer",
         json!({"inputs": [{"name": "x", "shape": [1u64 << 32, 1u64 << 32, 1u64 << 32], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(),
         400, "overflows"),
        ("/v2/models/identity/infer",
         json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, "two"]}]}).to_string().into_bytes(),
         400, "inputs[0].data[1]: \"two\" is not a valid FP32 value"),
        ("/v2/models/identity/infer",
         json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}).to_string().into_bytes(),
         400, "inputs[0].data[0]: 300 is not a valid INT8 value"),
    ];
    for (path, body, status, message) in cases {
        let reply = http.post_raw(path, &body).await;
        assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
        assert!(
            reply.error().contains(message),
            "{path}: {:?} lacks {message:?}",
            reply.error()
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_refused_in_json() {
    let servers = start().await;
    let missing = servers.http.get("/v3/nothing").await;
    assert_eq!(
        (missing.status, missing.error()),
        (404, "no route /v3/nothing".to_owned())
    );
    let wrong = servers.http.get("/v2/models/embed/infer").await;
    assert_eq!(wrong.status, 405);
    assert!(wrong.error().contains("GET"));
}

/// The raw form of BYTES elements: each behind its 4-byte little-endian length.
fn raw_bytes(texts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    out
}

/// A request in the binary extension's form: `header` JSON, then `binary`.
async fn binary_call(
    servers: &Servers,
    header: &Value,
    binary: &[u8],
    claimed: Option<usize>,
) -> Reply {
    let json = header.to_string().into_bytes();
    let length = claimed.unwrap_or(json.len()).to_string();
    let mut body = json;
    body.extend_from_slice(binary);
    servers
        .http
        .call(
            hyper::Method::POST,
            "/v2/models/embed/infer",
            body,
            &[("Inference-Header-Content-Length", &length)],
        )
        .await
}

#[tokio::test]
async fn the_binary_tensor_extension_carries_inputs_and_outputs_as_tritonclient_sends_them() {
    let servers = start().await;
    let raw = raw_bytes(&["abc", "aa"]);
    let header = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": raw.len()}}],
                        "outputs": [{"name": "embedding", "parameters": {"binary_data": true}}]});
    let reply = binary_call(&servers, &header, &raw, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let length: usize = reply.headers["inference-header-content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a length");
    let (json_part, binary) = reply.body.split_at(length);
    let json_part: Value = serde_json::from_slice(json_part).expect("JSON part");
    let output = &json_part["outputs"][0];
    assert_eq!(output["parameters"]["binary_data_size"], 24, "{json_part}");
    assert!(
        output.get("data").is_none(),
        "the data is in the binary part"
    );
    let floats: Vec<f32> = binary
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        floats,
        vec![3.0, 1.0, 1.0, 2.0, 2.0, 1.0],
        "the same rows as in JSON"
    );
    // Binary in, JSON out.
    let header = json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": raw.len()}}]});
    let reply = binary_call(&servers, &header, &raw, None).await;
    assert_eq!(
        reply.json()["outputs"][0]["data"],
        json!([3.0, 1.0, 1.0, 2.0, 2.0, 1.0])
    );
}

#[tokio::test]
async fn binary_parts_that_lie_about_their_lengths_get_400_never_a_read_past_the_body() {
    let servers = start().await;
    let raw = raw_bytes(&["abc"]);
    let input = |size: Value| {
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": size}}]})
    };
    let mut past = raw.clone();
    past[0] = 200; // a BYTES element claiming 200 bytes of a 7-byte part
    let cases: Vec<(Value, Vec<u8>, Option<usize>, &str)> = vec![
        (
            input(json!(raw.len())),
            raw.clone(),
            Some(1 << 40),
            "longer than the body",
        ),
        (
            input(json!(1u64 << 40)),
            raw.clone(),
            None,
            "bytes claimed but only 7 remain",
        ),
        (
            input(json!(-1)),
            raw.clone(),
            None,
            "is not a size in bytes",
        ),
        (input(json!(3)), raw.clone(), None, "truncated"),
        (
            input(json!(raw.len())),
            past,
            None,
            "length 200 but only 3 bytes remain",
        ),
        (
            input(json!(raw.len())),
            [raw.as_slice(), b"xyz"].concat(),
            None,
            "3 bytes that no input's binary_data_size claims",
        ),
        (
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"],
                            "parameters": {"binary_data_size": 7}}]}),
            raw.clone(),
            None,
            "both data and",
        ),
        (
            json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                            "parameters": {"binary_data_size": 7}}]}),
            raw.clone(),
            None,
            "needs 2 elements but the binary data holds 1",
        ),
        (
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}),
            Vec::new(),
            None,
            "no data",
        ),
    ];
    for (header, binary, claimed, message) in cases {
        let reply = binary_call(&servers, &header, &binary, claimed).await;
        assert_eq!(reply.status, 400, "{header}: {:?}", reply.body);
        assert!(
            reply.error().contains(message),
            "{header}: {:?} lacks {message:?}",
            reply.error()
        );
    }
    // A size without a binary part, and a header that is not a number.
    let reply = servers
        .http
        .post("/v2/models/embed/infer", &input(json!(7)))
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("no binary part"),
        "{}",
        reply.error()
    );
    let reply = servers
        .http
        .call(
            hyper::Method::POST,
            "/v2/models/embed/infer",
            b"{}".to_vec(),
            &[("Inference-Header-Content-Length", "ten")],
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("is not a length in bytes"),
        "{}",
        reply.error()
    );
}

#[tokio::test]
async fn a_throttled_model_answers_429_with_retry_after() {
    let servers = start().await;
    let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]});
    let reply = servers.http.post("/v2/models/busy/infer", &body).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
    assert!(reply.error().contains("throttled"));
}

#[tokio::test]
async fn requests_are_counted_by_model_version_protocol_and_code_without_unknown_names() {
    let servers = start().await;
    let _ = servers
        .http
        .post("/v2/models/embed/infer", &bytes_input(&["a"]))
        .await;
    let _ = servers
        .http
        .post("/v2/models/no-such-model/infer", &bytes_input(&["a"]))
        .await;
    let text = servers.metrics_text();
    assert!(
        text.contains(
            r#"gogrid_serve_requests_total{model="embed",version="1",protocol="rest",code="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"gogrid_serve_requests_total{model="unknown",version="unknown",protocol="rest",code="404"} 1"#));
    assert!(!text.contains("no-such-model"));
    assert!(text.contains(r#"gogrid_serve_batch_size_count{model="embed",version="1"} 1"#));
}
