//! Fuzzes the REST binary tensor data extension: a body split into a JSON
//! header and a binary part at any point, sizes that lie included; never a
//! panic, and every decoded tensor holds exactly its shape's elements.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let at = usize::from(split).min(body.len());
    let (json, binary) = body.split_at(at);
    if let Ok(request) = gogrid_serve::json::decode_infer_request_parts(json, Some(binary)) {
        for tensor in &request.inputs {
            assert_eq!(tensor.shape.iter().product::<usize>(), tensor.data.len());
        }
    }
});
