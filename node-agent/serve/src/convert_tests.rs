//! Unit tests of the protobuf conversion.

use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::proto::model_infer_request::InferInputTensor;

fn input(
    datatype: &str,
    shape: Vec<i64>,
    contents: Option<InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: "x".into(),
        datatype: datatype.into(),
        shape,
        parameters: HashMap::new(),
        contents,
    }
}

fn error_of(request: ModelInferRequest) -> String {
    match request_from_proto(request) {
        Ok(decoded) => panic!("decoded {decoded:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn raw_input_contents_decode_per_datatype() {
    let request = ModelInferRequest {
        inputs: vec![
            input("FP32", vec![1, 2], None),
            input("BYTES", vec![2], None),
        ],
        raw_input_contents: vec![
            TensorData::F32(vec![1.0, -2.0]).to_raw(),
            TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]).to_raw(),
        ],
        ..ModelInferRequest::default()
    };
    let decoded = request_from_proto(request).expect("valid");
    assert_eq!(decoded.inputs[0].data, TensorData::F32(vec![1.0, -2.0]));
    assert_eq!(
        decoded.inputs[1].data,
        TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()])
    );
}

#[test]
fn typed_contents_decode_and_narrow_with_range_checks() {
    let contents = InferTensorContents {
        int_contents: vec![1, -2],
        ..Default::default()
    };
    let decoded = request_from_proto(ModelInferRequest {
        inputs: vec![input("INT8", vec![2], Some(contents))],
        ..Default::default()
    })
    .expect("valid");
    assert_eq!(decoded.inputs[0].data, TensorData::I8(vec![1, -2]));
    let contents = InferTensorContents {
        int_contents: vec![1, 200],
        ..Default::default()
    };
    let message = error_of(ModelInferRequest {
        inputs: vec![input("INT8", vec![2], Some(contents))],
        ..Default::default()
    });
    assert_eq!(
        message,
        "inputs[0].contents[1]: 200 is out of range for INT8"
    );
}

#[test]
fn raw_contents_must_match_the_inputs_one_to_one() {
    let message = error_of(ModelInferRequest {
        inputs: vec![input("FP32", vec![1], None)],
        raw_input_contents: vec![vec![0; 4], vec![0; 4]],
        ..Default::default()
    });
    assert_eq!(message, "raw_input_contents has 2 entries for 1 inputs");
}

#[test]
fn raw_contents_of_the_wrong_size_are_named() {
    let message = error_of(ModelInferRequest {
        inputs: vec![input("FP32", vec![2], None)],
        raw_input_contents: vec![vec![0; 4]],
        ..Default::default()
    });
    assert_eq!(
        message,
        "inputs[0] (x): shape [2] needs 2 elements but the contents have 1"
    );
    let message = error_of(ModelInferRequest {
        inputs: vec![input("FP32", vec![1], None)],
        raw_input_contents: vec![vec![0; 3]],
        ..Default::default()
    });
    assert!(
        message.starts_with("raw_input_contents[0]: 3 bytes"),
        "{message}"
    );
}

#[test]
fn fp16_in_typed_contents_is_refused() {
    let message = error_of(ModelInferRequest {
        inputs: vec![input("FP16", vec![1], Some(InferTensorContents::default()))],
        ..Default::default()
    });
    assert_eq!(
        message,
        "inputs[0]: FP16 tensors must be sent in raw_input_contents"
    );
}

#[test]
fn a_response_carries_every_output_as_raw_contents() {
    let response = response_to_proto(InferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: "r".into(),
        parameters: Parameters::new(),
        outputs: vec![Tensor::new("y", vec![2], TensorData::I64(vec![3, 4])).expect("fits")],
    });
    assert_eq!(response.outputs[0].shape, vec![2]);
    assert_eq!(response.outputs[0].datatype, "INT64");
    assert_eq!(
        response.raw_output_contents,
        vec![TensorData::I64(vec![3, 4]).to_raw()]
    );
}

proptest! {
    #[test]
    fn arbitrary_protobuf_bytes_never_panic_the_conversion(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = ModelInferRequest::decode(bytes.as_slice()) {
            let _ = request_from_proto(request);
        }
    }
}
