//! The Open Inference Protocol over gRPC, through a tonic client generated from the same proto.

use std::collections::HashMap;

use gogrid_serve::proto::infer_parameter::ParameterChoice;
use gogrid_serve::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use gogrid_serve::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use gogrid_serve::{DataType, TensorData};
use tonic::Code;

use crate::fixtures::{BODY_LIMIT, start};

fn tensor(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    contents: Option<InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        parameters: HashMap::new(),
        contents,
    }
}

fn request(model: &str, version: &str, inputs: Vec<InferInputTensor>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        inputs,
        ..Default::default()
    }
}

fn texts(texts: &[&str]) -> InferInputTensor {
    let contents = InferTensorContents {
        bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
        ..Default::default()
    };
    tensor("text", "BYTES", vec![texts.len() as i64], Some(contents))
}

#[tokio::test]
async fn health_metadata_and_readiness_answer_over_grpc() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        !client
            .server_ready(ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
    let meta = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(meta.name, "gogrid");
    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        client
            .model_ready(ready("embed", ""))
            .await
            .expect("known")
            .into_inner()
            .ready
    );
    assert!(
        !client
            .model_ready(ready("loading", "1"))
            .await
            .expect("known")
            .into_inner()
            .ready
    );
    let unknown = client
        .model_ready(ready("nope", ""))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let model = client
        .model_metadata(ModelMetadataRequest {
            name: "identity".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(model.versions, vec!["1", "2"]);
    assert_eq!(model.platform, "fake");
    let embed = client
        .model_metadata(ModelMetadataRequest {
            name: "embed".into(),
            version: "1".into(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(
        (
            embed.inputs[0].datatype.as_str(),
            embed.inputs[0].shape.clone()
        ),
        ("BYTES", vec![-1])
    );
}

#[tokio::test]
async fn an_embedding_request_with_typed_contents_returns_raw_fp32_rows() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let mut req = request("embed", "", vec![texts(&["abc", "aa"])]);
    req.id = "g-1".into();
    let reply = client.model_infer(req).await.expect("infers").into_inner();
    assert_eq!(
        (
            reply.model_name.as_str(),
            reply.model_version.as_str(),
            reply.id.as_str()
        ),
        ("embed", "1", "g-1")
    );
    assert_eq!(reply.outputs[0].shape, vec![2, 3]);
    assert_eq!(reply.outputs[0].datatype, "FP32");
    let data =
        TensorData::from_raw(DataType::F32, &reply.raw_output_contents[0]).expect("raw fp32");
    assert_eq!(data, TensorData::F32(vec![3.0, 1.0, 1.0, 2.0, 2.0, 1.0]));
}

#[tokio::test]
async fn raw_input_contents_round_trip_through_a_versioned_identity_model() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let fp16 = TensorData::F16(vec![half::f16::from_f32(0.5), half::f16::from_f32(-2.0)]);
    let words = TensorData::Bytes(vec![b"x".to_vec(), b"yz".to_vec()]);
    let mut req = request(
        "identity",
        "1",
        vec![
            tensor("a", "FP16", vec![2], None),
            tensor("b", "BYTES", vec![1, 2], None),
        ],
    );
    req.raw_input_contents = vec![fp16.to_raw(), words.to_raw()];
    req.outputs = vec![InferRequestedOutputTensor {
        name: "OUTPUT1".into(),
        parameters: HashMap::new(),
    }];
    let reply = client
        .model_infer(req.clone())
        .await
        .expect("infers")
        .into_inner();
    assert_eq!(reply.model_version, "1");
    assert_eq!(reply.outputs.len(), 1);
    assert_eq!(reply.outputs[0].shape, vec![1, 2]);
    assert_eq!(reply.raw_output_contents, vec![words.to_raw()]);
    req.model_version = String::new();
    req.outputs.clear();
    let latest = client.model_infer(req).await.expect("infers").into_inner();
    assert_eq!(latest.model_version, "2");
    assert_eq!(latest.raw_output_contents[0], fp16.to_raw());
}

#[tokio::test]
async fn a_generation_request_reads_its_parameters_and_returns_text_output() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let prompt = InferTensorContents {
        bytes_contents: vec![b"hi there".to_vec()],
        ..Default::default()
    };
    let mut req = request(
        "gen",
        "",
        vec![tensor("text_input", "BYTES", vec![1], Some(prompt))],
    );
    let param = |choice| InferParameter {
        parameter_choice: Some(choice),
    };
    req.parameters
        .insert("max_tokens".into(), param(ParameterChoice::Int64Param(4)));
    req.parameters.insert(
        "stop".into(),
        param(ParameterChoice::StringParam("tok2".into())),
    );
    req.parameters.insert(
        "temperature".into(),
        param(ParameterChoice::DoubleParam(0.7)),
    );
    let reply = client
        .model_infer(req)
        .await
        .expect("generates")
        .into_inner();
    let text =
        TensorData::from_raw(DataType::Bytes, &reply.raw_output_contents[0]).expect("raw bytes");
    assert_eq!(text, TensorData::Bytes(vec![b"tok0 tok1 ".to_vec()]));
    let finish = reply
        .parameters
        .get("finish_reason")
        .and_then(|p| p.parameter_choice.clone());
    assert_eq!(finish, Some(ParameterChoice::StringParam("stop".into())));
}

#[tokio::test]
async fn bad_grpc_requests_get_the_matching_status_code_and_a_message() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let fp32 = |values: Vec<f32>| InferTensorContents {
        fp32_contents: values,
        ..Default::default()
    };
    let cases = vec![
        (
            request("nope", "", vec![texts(&["a"])]),
            Code::NotFound,
            "unknown model \"nope\"",
        ),
        (
            request("embed", "7", vec![texts(&["a"])]),
            Code::NotFound,
            "has no version \"7\"",
        ),
        (
            request("loading", "", vec![texts(&["a"])]),
            Code::Unavailable,
            "no ready version",
        ),
        (
            request(
                "embed",
                "",
                vec![tensor("text", "FP32", vec![1], Some(fp32(vec![1.0])))],
            ),
            Code::InvalidArgument,
            "text: datatype FP32, expected BYTES",
        ),
        (
            request(
                "identity",
                "",
                vec![tensor("x", "FP32", vec![3], Some(fp32(vec![1.0])))],
            ),
            Code::InvalidArgument,
            "shape [3] needs 3 elements but the contents have 1",
        ),
        (
            request("identity", "", vec![tensor("x", "FP8", vec![1], None)]),
            Code::InvalidArgument,
            "inputs[0].datatype: unknown datatype \"FP8\"",
        ),
        (
            request("embed", "", vec![texts(&[])]),
            Code::InvalidArgument,
            "empty batch",
        ),
        (
            request("identity", "", vec![]),
            Code::InvalidArgument,
            "inputs: empty",
        ),
        (
            request(
                "refused",
                "",
                vec![tensor("x", "FP32", vec![1], Some(fp32(vec![1.0])))],
            ),
            Code::Unavailable,
            "over the VRAM budget",
        ),
    ];
    for (req, code, message) in cases {
        let status = client.model_infer(req).await.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }
    let mut raw = request("identity", "", vec![tensor("x", "FP32", vec![1], None)]);
    raw.raw_input_contents = vec![vec![0; 4], vec![0; 4]];
    let status = client.model_infer(raw).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "raw_input_contents has 2 entries for 1 inputs"
    );
    // Raw contents that lie, and shapes no tensor can have: refused before
    // anything is allocated by the claimed size.
    let raw_cases: Vec<(&str, Vec<i64>, Vec<u8>, &str)> = vec![
        (
            "FP32",
            vec![1],
            vec![0; 6],
            "6 bytes is not a whole number of FP32 elements",
        ),
        ("FP32", vec![4], vec![0; 4], "shape [4] needs 4 elements"),
        (
            "BYTES",
            vec![1],
            [200u32.to_le_bytes().as_slice(), b"abc"].concat(),
            "length 200 but only 3 bytes remain",
        ),
        ("BYTES", vec![1], vec![1, 0], "truncated 4-byte length"),
        ("FP32", vec![-1], vec![0; 4], "negative dimension -1"),
        (
            "FP32",
            vec![1 << 32, 1 << 32, 1 << 32],
            vec![0; 4],
            "overflows",
        ),
    ];
    for (datatype, shape, bytes, message) in raw_cases {
        let model = if datatype == "BYTES" {
            "embed"
        } else {
            "identity"
        };
        let name = if datatype == "BYTES" { "text" } else { "x" };
        let mut req = request(model, "", vec![tensor(name, datatype, shape.clone(), None)]);
        req.raw_input_contents = vec![bytes];
        let status = client.model_infer(req).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{datatype} {shape:?}: {status:?}"
        );
        assert!(
            status.message().contains(message),
            "{datatype} {shape:?}: {:?} lacks {message:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_throttled_model_answers_resource_exhausted_with_retry_after() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let contents = InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    };
    let status = client
        .model_infer(request(
            "busy",
            "",
            vec![tensor("x", "FP32", vec![1], Some(contents))],
        ))
        .await
        .expect_err("throttled");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
}

#[tokio::test]
async fn a_message_over_the_configured_limit_is_refused_with_the_limit_named() {
    let servers = start().await;
    let mut client = servers.grpc().await;
    let mut req = request(
        "identity",
        "",
        vec![tensor("x", "UINT8", vec![BODY_LIMIT as i64 * 2], None)],
    );
    req.raw_input_contents = vec![vec![7; BODY_LIMIT * 2]];
    let status = client.model_infer(req).await.expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("the limit is: {BODY_LIMIT} bytes")),
        "{}",
        status.message()
    );
}
