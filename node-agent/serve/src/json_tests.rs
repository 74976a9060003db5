//! Unit tests of the JSON tensor codec.

use proptest::prelude::*;

use super::*;

fn error_of(body: &str) -> String {
    match decode_infer_request(body.as_bytes()) {
        Ok(request) => panic!("decoded {request:?}"),
        Err(ServeError::InvalidArgument(message)) => message,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn nested_data_is_flattened_row_major_and_the_id_kept() {
    let body = r#"{"id":"r1","parameters":{"max_tokens":3,"t":0.5,"s":"x","b":true},
        "inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}],
        "outputs":[{"name":"y"}]}"#;
    let request = decode_infer_request(body.as_bytes()).expect("valid");
    assert_eq!(request.id, "r1");
    assert_eq!(request.inputs[0].data, TensorData::I32(vec![1, 2, 3, 4]));
    assert_eq!(request.inputs[0].shape, vec![2, 2]);
    assert_eq!(
        request.parameters.get("max_tokens"),
        Some(&ParamValue::Int(3))
    );
    assert_eq!(request.parameters.get("t"), Some(&ParamValue::Double(0.5)));
    assert_eq!(request.outputs[0].name, "y");
}

#[test]
fn every_datatype_decodes_from_json() {
    for (datatype, data, expected) in [
        ("BOOL", "[true,false]", TensorData::Bool(vec![true, false])),
        ("UINT8", "[0,255]", TensorData::U8(vec![0, 255])),
        ("INT64", "[-1,2]", TensorData::I64(vec![-1, 2])),
        (
            "FP16",
            "[0.5,1]",
            TensorData::F16(vec![half::f16::from_f32(0.5), half::f16::ONE]),
        ),
        ("FP64", "[0.5,1]", TensorData::F64(vec![0.5, 1.0])),
        (
            "BYTES",
            r#"["a","bc"]"#,
            TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]),
        ),
    ] {
        let body = format!(
            r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#
        );
        let request = decode_infer_request(body.as_bytes()).expect(datatype);
        assert_eq!(request.inputs[0].data, expected);
    }
}

#[test]
fn data_that_does_not_fill_the_shape_names_both_counts() {
    let message =
        error_of(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#);
    assert_eq!(
        message,
        "inputs[0].data: shape [3] needs 3 elements but data has 2"
    );
}

#[test]
fn an_unknown_datatype_is_named() {
    let message = error_of(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#);
    assert!(
        message.starts_with("inputs[0].datatype: unknown datatype \"FP8\""),
        "{message}"
    );
}

#[test]
fn a_value_of_the_wrong_type_or_range_is_named_with_its_index() {
    let message =
        error_of(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","data":[1,300]}]}"#);
    assert_eq!(message, "inputs[0].data[1]: 300 is not a valid UINT8 value");
    let message =
        error_of(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#);
    assert_eq!(
        message,
        "inputs[0].data[0]: \"a\" is not a valid FP32 value"
    );
}

#[test]
fn a_negative_dimension_is_rejected() {
    let message = error_of(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[]}]}"#);
    assert_eq!(message, "inputs[0].shape: negative dimension -1");
}

#[test]
fn malformed_json_and_missing_fields_say_where() {
    assert!(error_of("{").contains("EOF"));
    assert!(error_of(r#"{"id":"x"}"#).contains("missing field `inputs`"));
}

#[test]
fn a_parameter_that_is_not_a_scalar_is_named() {
    let message = error_of(r#"{"parameters":{"stop":["a"]},"inputs":[]}"#);
    assert_eq!(
        message,
        r#"parameters.stop: ["a"] is not a bool, number or string"#
    );
}

#[test]
fn a_response_encodes_flat_data_with_its_id_and_parameters() {
    let mut parameters = Parameters::new();
    parameters.insert("finish_reason".into(), ParamValue::String("length".into()));
    let response = InferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: "r".into(),
        parameters,
        outputs: vec![Tensor::new("y", vec![1, 2], TensorData::F32(vec![1.0, 2.5])).expect("fits")],
    };
    assert_eq!(
        encode_infer_response(&response),
        json!({
            "model_name": "m", "model_version": "1", "id": "r",
            "parameters": {"finish_reason": "length"},
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.5]}],
        })
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_infer_request(&body);
    }

    #[test]
    fn arbitrary_shapes_and_data_either_decode_consistently_or_fail(
        shape in proptest::collection::vec(-2i64..5, 0..4),
        data in proptest::collection::vec(-300i64..300, 0..20),
        datatype in proptest::sample::select(vec!["BOOL", "UINT8", "INT8", "INT32", "FP16", "FP32", "BYTES"]),
    ) {
        let body = json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]});
        if let Ok(request) = decode_infer_request(body.to_string().as_bytes()) {
            let tensor = &request.inputs[0];
            prop_assert_eq!(tensor.shape.iter().product::<usize>(), tensor.data.len());
        }
    }
}
