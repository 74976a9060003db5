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
    data: Value,
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
    let request: JsonRequest = serde_json::from_slice(body).map_err(|e| {
        ServeError::invalid(format!(
            "request body is not a valid inference request: {e}"
        ))
    })?;
    let inputs = request
        .inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| decode_input(i, input))
        .collect::<Result<Vec<_>>>()?;
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

fn decode_input(index: usize, input: JsonInput) -> Result<Tensor> {
    let field = format!("inputs[{index}]");
    let datatype = DataType::parse_field(&input.datatype, &format!("{field}.datatype"))?;
    let expected = element_count(&input.shape)
        .map_err(|e| ServeError::invalid(format!("{field}.shape: {e}")))?;
    let mut elements = Vec::new();
    flatten(&input.data, &mut elements);
    if elements.len() != expected {
        return Err(ServeError::invalid(format!(
            "{field}.data: shape {:?} needs {expected} elements but data has {}",
            input.shape,
            elements.len()
        )));
    }
    let data = convert(datatype, &elements, &format!("{field}.data"))?;
    let shape = input.shape.iter().map(|&d| d as usize).collect();
    let mut tensor = Tensor::new(input.name, shape, data)?;
    tensor.parameters = parameters(input.parameters, &format!("{field}.parameters"))?;
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
    let outputs: Vec<Value> = response
        .outputs
        .iter()
        .map(|t| {
            let mut out = json!({
                "name": t.name,
                "datatype": t.datatype().as_str(),
                "shape": t.shape,
                "data": data_json(&t.data),
            });
            if !t.parameters.is_empty() {
                out["parameters"] = parameters_json(&t.parameters);
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
    body
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
