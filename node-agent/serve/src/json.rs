//! The REST JSON tensor format of the Open Inference Protocol: request decoding
//! (every error names its field) and response encoding.

use half::f16;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Result, ServeError};
use crate::infer::{InferRequest, InferResponse, RequestedOutput};
use crate::tensor::{DataType, ParamValue, Parameters, Tensor, TensorData, element_count};

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Absent when the tensor is in the binary part (`binary_data_size`).
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Decodes an inference request body. Never panics; errors are 400s that name
/// the field and value at fault.
pub fn decode_infer_request(body: &[u8]) -> Result<InferRequest> {
    decode_infer_request_parts(body, None)
}

/// The parameter that puts an input (or output) tensor in the binary part.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";

/// Decodes the JSON part of a request whose tensors may follow it as binary
/// data (the binary tensor data extension): an input with the parameter
/// `binary_data_size` takes that many bytes of `binary`, in input order, in
/// the raw form (little-endian elements, `BYTES` 4-byte length-prefixed).
/// Every size is checked against the bytes really there before anything is
/// read or allocated, and all of `binary` must be used.
pub fn decode_infer_request_parts(json: &[u8], binary: Option<&[u8]>) -> Result<InferRequest> {
    let request: JsonRequest = serde_json::from_slice(json).map_err(|e| {
        ServeError::invalid(format!(
            "request body is not a valid inference request: {e}"
        ))
    })?;
    let mut rest = binary.unwrap_or_default();
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| decode_input(i, input, binary.is_some(), &mut rest))
        .collect::<Result<Vec<_>>>()?;
    if !rest.is_empty() {
        return Err(ServeError::invalid(format!(
            "the binary part has {} bytes that no input's binary_data_size claims",
            rest.len()
        )));
    }
    let outputs = request
        .outputs
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            Ok(RequestedOutput {
                name: o.name,
                parameters: parameters(o.parameters, &format!("outputs[{i}].parameters"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InferRequest {
        id: request.id.unwrap_or_default(),
        parameters: parameters(request.parameters, "parameters")?,
        inputs,
        outputs,
    })
}

fn decode_input(
    index: usize,
    input: JsonInput,
    has_binary: bool,
    binary: &mut &[u8],
) -> Result<Tensor> {
    let field = format!("inputs[{index}]");
    let datatype = DataType::parse_field(&input.datatype, &format!("{field}.datatype"))?;
    let expected = element_count(&input.shape)
        .map_err(|e| ServeError::invalid(format!("{field}.shape: {e}")))?;
    let mut params = parameters(input.parameters, &format!("{field}.parameters"))?;
    let binary_size = params.remove(BINARY_DATA_SIZE);
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(ServeError::invalid(format!(
                "{field}: both data and parameters.{BINARY_DATA_SIZE} are given"
            )));
        }
        (Some(size), None) => {
            let field = format!("{field}.parameters.{BINARY_DATA_SIZE}");
            if !has_binary {
                return Err(ServeError::invalid(format!(
                    "{field}: the request has no binary part (no Inference-Header-Content-Length header)"
                )));
            }
            let size = match size {
                ParamValue::Int(n) => usize::try_from(n).ok(),
                ParamValue::Uint(n) => usize::try_from(n).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                ServeError::invalid(format!("{field}: {size:?} is not a size in bytes"))
            })?;
            if size > binary.len() {
                return Err(ServeError::invalid(format!(
                    "{field}: {size} bytes claimed but only {} remain in the binary part",
                    binary.len()
                )));
            }
            let (raw, rest) = binary.split_at(size);
            *binary = rest;
            let data = TensorData::from_raw(datatype, raw)
                .map_err(|e| ServeError::invalid(format!("{field}: {e}")))?;
            if data.len() != expected {
                return Err(ServeError::invalid(format!(
                    "{field}: shape {:?} needs {expected} elements but the binary data holds {}",
                    input.shape,
                    data.len()
                )));
            }
            data
        }
        (None, data) => {
            let data = data.ok_or_else(|| {
                ServeError::invalid(format!(
                    "{field}: no data (give data, or parameters.{BINARY_DATA_SIZE} with a binary part)"
                ))
            })?;
            let mut elements = Vec::new();
            flatten(&data, &mut elements);
            if elements.len() != expected {
                return Err(ServeError::invalid(format!(
                    "{field}.data: shape {:?} needs {expected} elements but data has {}",
                    input.shape,
                    elements.len()
                )));
            }
            convert(datatype, &elements, &format!("{field}.data"))?
        }
    };
    let shape = input.shape.iter().map(|&d| d as usize).collect();
    let mut tensor = Tensor::new(input.name, shape, data)?;
    tensor.parameters = params;
    Ok(tensor)
}

/// Flattens nested arrays row-major; serde_json's recursion limit bounds the depth.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        scalar => out.push(scalar),
    }
}

fn convert(datatype: DataType, elements: &[&Value], field: &str) -> Result<TensorData> {
    fn each<T>(
        elements: &[&Value],
        field: &str,
        datatype: DataType,
        f: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        elements
            .iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| {
                    ServeError::invalid(format!(
                        "{field}[{i}]: {v} is not a valid {datatype} value"
                    ))
                })
            })
            .collect()
    }
    let e = elements;
    let d = datatype;
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(each(e, field, d, Value::as_bool)?),
        DataType::U8 => TensorData::U8(each(e, field, d, |v| v.as_u64()?.try_into().ok())?),
        DataType::U16 => TensorData::U16(each(e, field, d, |v| v.as_u64()?.try_into().ok())?),
        DataType::U32 => TensorData::U32(each(e, field, d, |v| v.as_u64()?.try_into().ok())?),
        DataType::U64 => TensorData::U64(each(e, field, d, Value::as_u64)?),
        DataType::I8 => TensorData::I8(each(e, field, d, |v| v.as_i64()?.try_into().ok())?),
        DataType::I16 => TensorData::I16(each(e, field, d, |v| v.as_i64()?.try_into().ok())?),
        DataType::I32 => TensorData::I32(each(e, field, d, |v| v.as_i64()?.try_into().ok())?),
        DataType::I64 => TensorData::I64(each(e, field, d, Value::as_i64)?),
        DataType::F16 => TensorData::F16(each(e, field, d, |v| v.as_f64().map(f16::from_f64))?),
        DataType::F32 => TensorData::F32(each(e, field, d, |v| v.as_f64().map(|x| x as f32))?),
        DataType::F64 => TensorData::F64(each(e, field, d, Value::as_f64)?),
        DataType::Bytes => TensorData::Bytes(each(e, field, d, |v| {
            v.as_str().map(|s| s.as_bytes().to_vec())
        })?),
    })
}

fn parameters(map: Option<Map<String, Value>>, field: &str) -> Result<Parameters> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let param = match &value {
                Value::Bool(b) => ParamValue::Bool(*b),
                Value::String(s) => ParamValue::String(s.clone()),
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => ParamValue::Int(i),
                    (None, Some(u), _) => ParamValue::Uint(u),
                    (None, None, Some(f)) => ParamValue::Double(f),
                    _ => return Err(bad_parameter(field, &name, &value)),
                },
                _ => return Err(bad_parameter(field, &name, &value)),
            };
            Ok((name, param))
        })
        .collect()
}

fn bad_parameter(field: &str, name: &str, value: &Value) -> ServeError {
    ServeError::invalid(format!(
        "{field}.{name}: {value} is not a bool, number or string"
    ))
}

/// Encodes parameters as a JSON object.
pub(crate) fn parameters_json(parameters: &Parameters) -> Value {
    parameters
        .iter()
        .map(|(name, value)| {
            let value = match value {
                ParamValue::Bool(b) => json!(b),
                ParamValue::Int(i) => json!(i),
                ParamValue::Uint(u) => json!(u),
                ParamValue::Double(f) => json!(f),
                ParamValue::String(s) => json!(s),
            };
            (name.clone(), value)
        })
        .collect::<Map<_, _>>()
        .into()
}

fn data_json(data: &TensorData) -> Value {
    match data {
        TensorData::Bool(v) => json!(v),
        TensorData::U8(v) => json!(v),
        TensorData::U16(v) => json!(v),
        TensorData::U32(v) => json!(v),
        TensorData::U64(v) => json!(v),
        TensorData::I8(v) => json!(v),
        TensorData::I16(v) => json!(v),
        TensorData::I32(v) => json!(v),
        TensorData::I64(v) => json!(v),
        TensorData::F16(v) => json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::F32(v) => json!(v),
        TensorData::F64(v) => json!(v),
        TensorData::Bytes(v) => {
            json!(
                v.iter()
                    .map(|b| String::from_utf8_lossy(b))
                    .collect::<Vec<_>>()
            )
        }
    }
}

/// Encodes a response in the protocol's JSON form (flat `data`).
pub fn encode_infer_response(response: &InferResponse) -> Value {
    encode_infer_response_parts(response, &|_| false).0
}

/// Encodes a response, the outputs for which `binary` says so in the binary
/// part (their JSON carries `parameters.binary_data_size` instead of `data`);
/// returns the JSON and the binary part.
pub fn encode_infer_response_parts(
    response: &InferResponse,
    binary: &dyn Fn(&str) -> bool,
) -> (Value, Vec<u8>) {
    let mut raw = Vec::new();
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .map(|t| {
            let mut out = json!({
                "name": t.name,
                "datatype": t.datatype().as_str(),
                "shape": t.shape,
            });
            let mut parameters = t.parameters.clone();
            if binary(&t.name) {
                let bytes = t.data.to_raw();
                parameters.insert(
                    BINARY_DATA_SIZE.to_owned(),
                    ParamValue::Uint(bytes.len() as u64),
                );
                raw.extend_from_slice(&bytes);
            } else {
                out["data"] = data_json(&t.data);
            }
            if !parameters.is_empty() {
                out["parameters"] = parameters_json(&parameters);
            }
            out
        })
        .collect();
    let mut body = json!({
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    });
    if !response.id.is_empty() {
        body["id"] = json!(response.id);
    }
    if !response.parameters.is_empty() {
        body["parameters"] = parameters_json(&response.parameters);
    }
    (body, raw)
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
