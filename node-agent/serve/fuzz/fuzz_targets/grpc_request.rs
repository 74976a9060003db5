//! Fuzzes protobuf `ModelInferRequest` decoding and its conversion to typed tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = gogrid_serve::proto::ModelInferRequest::decode(bytes)
        && let Ok(typed) = gogrid_serve::convert::request_from_proto(request)
    {
        for tensor in &typed.inputs {
            assert_eq!(tensor.shape.iter().product::<usize>(), tensor.data.len());
        }
    }
});
