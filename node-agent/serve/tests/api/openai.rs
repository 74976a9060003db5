//! OpenAI-style endpoints: models, embeddings, completions (whole and streamed).

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use crate::fixtures::start;

/// The `data:` payloads of a server-sent event stream, in order.
fn sse_data(stream: &str) -> Vec<String> {
    stream
        .split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[tokio::test]
async fn models_are_listed_by_name() {
    let servers = start().await;
    let reply = servers.http.get("/v1/models").await.json();
    assert_eq!(reply["object"], "list");
    let ids: Vec<&str> = reply["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"embed") && ids.contains(&"gen"), "{ids:?}");
}

#[tokio::test]
async fn embeddings_take_a_string_or_an_array_of_strings() {
    let servers = start().await;
    let one = servers
        .http
        .post("/v1/embeddings", &json!({"model": "embed", "input": "abc"}))
        .await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(
        one.json()["data"],
        json!([{"object": "embedding", "index": 0, "embedding": [3.0, 1.0, 1.0]}])
    );
    let many = servers
        .http
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ["a", "bb"]}),
        )
        .await
        .json();
    assert_eq!(many["data"][1]["embedding"], json!([2.0, 0.0, 1.0]));
    assert_eq!(many["model"], "embed");
}

#[tokio::test]
async fn a_completion_returns_text_finish_reason_and_usage() {
    let servers = start().await;
    let body = json!({"model": "gen", "prompt": "one two", "max_tokens": 3, "temperature": 0.2, "top_p": 0.9, "seed": 1});
    let reply = servers.http.post("/v1/completions", &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], "tok0 tok1 tok2 ");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );
    let stopped = servers
        .http
        .post(
            "/v1/completions",
            &json!({"model": "gen", "prompt": "x", "max_tokens": 9, "stop": ["tok1"]}),
        )
        .await
        .json();
    assert_eq!(stopped["choices"][0]["text"], "tok0 ");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn a_streamed_completion_sends_every_token_in_order_then_done() {
    let servers = start().await;
    let body = json!({"model": "gen", "prompt": "go", "max_tokens": 50, "stream": true});
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
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let raw = response
        .into_body()
        .collect()
        .await
        .expect("stream reads")
        .to_bytes();
    let events = sse_data(&String::from_utf8_lossy(&raw));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect();
    let texts: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    let mut expected: Vec<String> = (0..50).map(|i| format!("tok{i} ")).collect();
    expected.push(String::new());
    assert_eq!(texts, expected);
    assert!(
        chunks[..50]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(chunks[50]["choices"][0]["finish_reason"], "length");
    let ids: std::collections::BTreeSet<&str> =
        chunks.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "every chunk carries the same completion id");
}

#[tokio::test]
async fn bad_openai_requests_get_a_4xx_or_501_that_names_the_problem() {
    let servers = start().await;
    let cases = vec![
        (
            "/v1/completions",
            json!({"model": "embed", "prompt": "x"}),
            400,
            "cannot serve completions requests",
        ),
        (
            "/v1/completions",
            json!({"model": "gen", "prompt": ["a", "b"]}),
            501,
            "prompt: 2 prompts in one request",
        ),
        (
            "/v1/completions",
            json!({"model": "gen", "prompt": 5}),
            400,
            "prompt: expected a string or an array of strings",
        ),
        (
            "/v1/completions",
            json!({"model": "gen", "prompt": "x", "n": 2}),
            501,
            "n: only one choice",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x"}),
            400,
            "missing field `model`",
        ),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}),
            404,
            "unknown model \"nope\"",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": [1, 2]}),
            400,
            "input: expected a string",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": []}),
            400,
            "empty batch",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": "a", "encoding_format": "base64"}),
            501,
            "encoding_format",
        ),
        (
            "/v1/embeddings",
            json!({"model": "gen", "input": "a"}),
            400,
            "cannot serve embeddings requests",
        ),
    ];
    for (path, body, status, message) in cases {
        let reply = servers.http.post(path, &body).await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
        assert!(
            reply.error().contains(message),
            "{body}: {:?} lacks {message:?}",
            reply.error()
        );
    }
    let malformed = servers
        .http
        .post_raw("/v1/completions", b"{\"model\":")
        .await;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed
            .error()
            .starts_with("request body is not a valid completions request")
    );
}
