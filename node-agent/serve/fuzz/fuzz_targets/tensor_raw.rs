//! Fuzzes the raw tensor decoder (gRPC `raw_input_contents`, REST binary
//! parts) for every data type: never a panic, and what decodes encodes back
//! to the same bytes.
#![no_main]

use gogrid_serve::{DataType, TensorData};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 13] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BYTES",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let Some(datatype) = DataType::parse(TYPES[usize::from(pick) % TYPES.len()]) else {
        return;
    };
    if let Ok(tensor) = TensorData::from_raw(datatype, raw) {
        if datatype != DataType::Bool {
            assert_eq!(tensor.to_raw(), raw);
        }
    }
});
