//! Conversion between the protobuf `ModelInferRequest`/`ModelInferResponse` and typed tensors.

use std::collections::HashMap;

use crate::error::{Result, ServeError};
use crate::infer::{InferRequest, InferResponse, RequestedOutput};
use crate::proto::infer_parameter::ParameterChoice;
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::tensor::{DataType, ParamValue, Parameters, Tensor, TensorData, element_count};

/// Decodes a gRPC inference request into typed tensors. Never panics; errors are
/// `INVALID_ARGUMENT`s naming the field at fault.
pub fn request_from_proto(request: ModelInferRequest) -> Result<InferRequest> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() {
        if raw.len() != request.inputs.len() {
            return Err(ServeError::invalid(format!(
                "raw_input_contents has {} entries for {} inputs",
                raw.len(),
                request.inputs.len()
            )));
        }
        if let Some(i) = request.inputs.iter().position(|t| t.contents.is_some()) {
            return Err(ServeError::invalid(format!(
                "inputs[{i}].contents must be empty when raw_input_contents is used"
            )));
        }
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.into_iter().enumerate() {
        let field = format!("inputs[{i}]");
        let datatype = DataType::parse_field(&input.datatype, &format!("{field}.datatype"))?;
        let expected = element_count(&input.shape)
            .map_err(|e| ServeError::invalid(format!("{field}.shape: {e}")))?;
        let data = match raw.get(i) {
            Some(bytes) => TensorData::from_raw(datatype, bytes)
                .map_err(|e| ServeError::invalid(format!("raw_input_contents[{i}]: {e}")))?,
            None => from_contents(datatype, input.contents.unwrap_or_default(), &field)?,
        };
        if data.len() != expected {
            return Err(ServeError::invalid(format!(
                "{field} ({}): shape {:?} needs {expected} elements but the contents have {}",
                input.name,
                input.shape,
                data.len()
            )));
        }
        let shape = input.shape.iter().map(|&d| d as usize).collect();
        let mut tensor = Tensor::new(input.name, shape, data)?;
        tensor.parameters = parameters(input.parameters, &format!("{field}.parameters"))?;
        inputs.push(tensor);
    }
    let outputs = request
        .outputs
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
        id: request.id,
        parameters: parameters(request.parameters, "parameters")?,
        inputs,
        outputs,
    })
}

fn from_contents(datatype: DataType, c: InferTensorContents, field: &str) -> Result<TensorData> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        values: Vec<S>,
        field: &str,
        datatype: DataType,
    ) -> Result<Vec<T>> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                T::try_from(v).map_err(|_| {
                    ServeError::invalid(format!(
                        "{field}.contents[{i}]: {v} is out of range for {datatype}"
                    ))
                })
            })
            .collect()
    }
    let d = datatype;
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::U8 => TensorData::U8(narrow(c.uint_contents, field, d)?),
        DataType::U16 => TensorData::U16(narrow(c.uint_contents, field, d)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::I8 => TensorData::I8(narrow(c.int_contents, field, d)?),
        DataType::I16 => TensorData::I16(narrow(c.int_contents, field, d)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::F16 => {
            return Err(ServeError::invalid(format!(
                "{field}: FP16 tensors must be sent in raw_input_contents"
            )));
        }
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

fn parameters(map: HashMap<String, InferParameter>, field: &str) -> Result<Parameters> {
    map.into_iter()
        .map(|(name, value)| {
            let value = match value.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => ParamValue::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => ParamValue::Int(i),
                Some(ParameterChoice::Uint64Param(u)) => ParamValue::Uint(u),
                Some(ParameterChoice::DoubleParam(f)) => ParamValue::Double(f),
                Some(ParameterChoice::StringParam(s)) => ParamValue::String(s),
                None => return Err(ServeError::invalid(format!("{field}.{name}: no value set"))),
            };
            Ok((name, value))
        })
        .collect()
}

/// Encodes parameters for a protobuf message.
pub(crate) fn parameters_to_proto(parameters: Parameters) -> HashMap<String, InferParameter> {
    parameters
        .into_iter()
        .map(|(name, value)| {
            let choice = match value {
                ParamValue::Bool(b) => ParameterChoice::BoolParam(b),
                ParamValue::Int(i) => ParameterChoice::Int64Param(i),
                ParamValue::Uint(u) => ParameterChoice::Uint64Param(u),
                ParamValue::Double(f) => ParameterChoice::DoubleParam(f),
                ParamValue::String(s) => ParameterChoice::StringParam(s),
            };
            (
                name,
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect()
}

/// Encodes a response the way Triton does: every output in `raw_output_contents`.
pub fn response_to_proto(response: InferResponse) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(response.outputs.len());
    let outputs = response
        .outputs
        .into_iter()
        .map(|t| {
            raw.push(t.data.to_raw());
            InferOutputTensor {
                datatype: t.datatype().as_str().to_owned(),
                shape: t
                    .shape
                    .iter()
                    .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                    .collect(),
                name: t.name,
                parameters: parameters_to_proto(t.parameters),
                contents: None,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: parameters_to_proto(response.parameters),
        outputs,
        raw_output_contents: raw,
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
