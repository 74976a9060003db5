//! Fuzzes the REST JSON inference request decoder: any bytes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = gogrid_serve::json::decode_infer_request(body) {
        for tensor in &request.inputs {
            assert_eq!(tensor.shape.iter().product::<usize>(), tensor.data.len());
        }
    }
});
