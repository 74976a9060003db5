//! Typed tensors, data types and parameters shared by every protocol and backend.

use std::collections::BTreeMap;

use half::f16;

use crate::error::{Result, ServeError};

/// An Open Inference Protocol data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`
    Bool,
    /// `UINT8`
    U8,
    /// `UINT16`
    U16,
    /// `UINT32`
    U32,
    /// `UINT64`
    U64,
    /// `INT8`
    I8,
    /// `INT16`
    I16,
    /// `INT32`
    I32,
    /// `INT64`
    I64,
    /// `FP16`
    F16,
    /// `FP32`
    F32,
    /// `FP64`
    F64,
    /// `BYTES`: variable-length byte strings.
    Bytes,
}

impl DataType {
    /// Parses the protocol's spelling (`"FP32"`); `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "FP16" => Self::F16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// Like [`DataType::parse`], with an error naming the field and the value.
    pub fn parse_field(name: &str, field: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            ServeError::invalid(format!(
                "{field}: unknown datatype {name:?} (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64 or BYTES)"
            ))
        })
    }

    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw form; `None` for `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::U8 | Self::I8 => Some(1),
            Self::U16 | Self::I16 | Self::F16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tensor's elements, flattened row-major, typed by data type.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL` elements.
    Bool(Vec<bool>),
    /// `UINT8` elements.
    U8(Vec<u8>),
    /// `UINT16` elements.
    U16(Vec<u16>),
    /// `UINT32` elements.
    U32(Vec<u32>),
    /// `UINT64` elements.
    U64(Vec<u64>),
    /// `INT8` elements.
    I8(Vec<i8>),
    /// `INT16` elements.
    I16(Vec<i16>),
    /// `INT32` elements.
    I32(Vec<i32>),
    /// `INT64` elements.
    I64(Vec<i64>),
    /// `FP16` elements.
    F16(Vec<f16>),
    /// `FP32` elements.
    F32(Vec<f32>),
    /// `FP64` elements.
    F64(Vec<f64>),
    /// `BYTES` elements.
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any numeric variant (not `Bool`, `Bytes`).
macro_rules! numeric {
    ($data:expr, $v:ident => $body:expr, $bool:ident => $bool_body:expr, $bytes:ident => $bytes_body:expr) => {
        match $data {
            TensorData::Bool($bool) => $bool_body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($bytes) => $bytes_body,
        }
    };
}

impl TensorData {
    /// The number of elements.
    pub fn len(&self) -> usize {
        numeric!(self, v => v.len(), b => b.len(), s => s.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data type of the elements.
    pub fn datatype(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Bool,
            Self::U8(_) => DataType::U8,
            Self::U16(_) => DataType::U16,
            Self::U32(_) => DataType::U32,
            Self::U64(_) => DataType::U64,
            Self::I8(_) => DataType::I8,
            Self::I16(_) => DataType::I16,
            Self::I32(_) => DataType::I32,
            Self::I64(_) => DataType::I64,
            Self::F16(_) => DataType::F16,
            Self::F32(_) => DataType::F32,
            Self::F64(_) => DataType::F64,
            Self::Bytes(_) => DataType::Bytes,
        }
    }

    /// The raw form: little-endian elements; `BYTES` elements each behind a
    /// 4-byte little-endian length.
    pub fn to_raw(&self) -> Vec<u8> {
        numeric!(self,
            v => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            b => b.iter().map(|&x| u8::from(x)).collect(),
            s => {
                let mut out = Vec::with_capacity(s.iter().map(|e| e.len() + 4).sum());
                for element in s {
                    let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(element);
                }
                out
            }
        )
    }

    /// Decodes the raw form of `datatype`; the error says what did not fit.
    pub fn from_raw(datatype: DataType, raw: &[u8]) -> std::result::Result<Self, String> {
        fn chunks<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            raw.chunks_exact(N)
                .map(|c| {
                    let mut bytes = [0u8; N];
                    bytes.copy_from_slice(c);
                    f(bytes)
                })
                .collect()
        }
        if let Some(size) = datatype.element_size()
            && !raw.len().is_multiple_of(size)
        {
            return Err(format!(
                "{} bytes is not a whole number of {datatype} elements ({size} bytes each)",
                raw.len()
            ));
        }
        Ok(match datatype {
            DataType::Bool => Self::Bool(raw.iter().map(|&b| b != 0).collect()),
            DataType::U8 => Self::U8(raw.to_vec()),
            DataType::U16 => Self::U16(chunks(raw, u16::from_le_bytes)),
            DataType::U32 => Self::U32(chunks(raw, u32::from_le_bytes)),
            DataType::U64 => Self::U64(chunks(raw, u64::from_le_bytes)),
            DataType::I8 => Self::I8(chunks(raw, i8::from_le_bytes)),
            DataType::I16 => Self::I16(chunks(raw, i16::from_le_bytes)),
            DataType::I32 => Self::I32(chunks(raw, i32::from_le_bytes)),
            DataType::I64 => Self::I64(chunks(raw, i64::from_le_bytes)),
            DataType::F16 => Self::F16(chunks(raw, f16::from_le_bytes)),
            DataType::F32 => Self::F32(chunks(raw, f32::from_le_bytes)),
            DataType::F64 => Self::F64(chunks(raw, f64::from_le_bytes)),
            DataType::Bytes => Self::Bytes(split_bytes(raw)?),
        })
    }
}

/// Splits length-prefixed `BYTES` elements.
fn split_bytes(mut raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (prefix, rest) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("BYTES element {}: truncated 4-byte length", out.len()))?;
        let len = u32::from_le_bytes(*prefix) as usize;
        if rest.len() < len {
            return Err(format!(
                "BYTES element {}: length {len} but only {} bytes remain",
                out.len(),
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(len);
        out.push(element.to_vec());
        raw = rest;
    }
    Ok(out)
}

/// The number of elements a shape holds; the error names negative or overflowing dimensions.
pub fn element_count(shape: &[i64]) -> std::result::Result<usize, String> {
    shape.iter().try_fold(1usize, |acc, &dim| {
        let dim = usize::try_from(dim).map_err(|_| format!("negative dimension {dim}"))?;
        acc.checked_mul(dim)
            .ok_or_else(|| format!("shape {shape:?} overflows"))
    })
}

/// A named parameter value (the protocol's `InferParameter`).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// `bool_param`, or a JSON boolean.
    Bool(bool),
    /// `int64_param`, or a JSON integer.
    Int(i64),
    /// `uint64_param`, or a JSON integer above `i64::MAX`.
    Uint(u64),
    /// `double_param`, or a JSON number with a fraction.
    Double(f64),
    /// `string_param`, or a JSON string.
    String(String),
}

impl ParamValue {
    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Int(v) => Some(v as f64),
            Self::Uint(v) => Some(v as f64),
            Self::Double(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an unsigned integer, when it is a non-negative whole number.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Int(v) => u64::try_from(v).ok(),
            Self::Uint(v) => Some(v),
            Self::Double(v) if v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 => {
                Some(v as u64)
            }
            _ => None,
        }
    }
}

/// Named parameters, sorted by name.
pub type Parameters = BTreeMap<String, ParamValue>;

/// A named tensor whose element count matches its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, flattened row-major.
    pub data: TensorData,
    /// Per-tensor parameters.
    pub parameters: Parameters,
}

impl Tensor {
    /// A tensor; fails when the element count is not the product of `shape`.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let name = name.into();
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| ServeError::invalid(format!("{name}: shape {shape:?} overflows")))?;
        if expected != data.len() {
            return Err(ServeError::invalid(format!(
                "{name}: shape {shape:?} holds {expected} elements but {} were given",
                data.len()
            )));
        }
        Ok(Self {
            name,
            shape,
            data,
            parameters: Parameters::new(),
        })
    }

    /// The data type of the elements.
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_form_round_trips_every_data_type() {
        let cases = [
            TensorData::Bool(vec![true, false]),
            TensorData::U16(vec![1, 65535]),
            TensorData::I64(vec![-5, 7]),
            TensorData::F16(vec![f16::from_f32(1.5)]),
            TensorData::F32(vec![0.25, -2.0]),
            TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()]),
        ];
        for data in cases {
            let raw = data.to_raw();
            assert_eq!(TensorData::from_raw(data.datatype(), &raw), Ok(data));
        }
    }

    #[test]
    fn truncated_bytes_elements_are_rejected_with_the_element_index() {
        let mut raw = TensorData::Bytes(vec![b"ok".to_vec()]).to_raw();
        raw.extend_from_slice(&10u32.to_le_bytes());
        raw.push(b'x');
        let error = TensorData::from_raw(DataType::Bytes, &raw).err();
        assert_eq!(
            error.as_deref(),
            Some("BYTES element 1: length 10 but only 1 bytes remain")
        );
    }

    #[test]
    fn a_tensor_whose_data_does_not_fill_its_shape_is_rejected() {
        let error = Tensor::new("x", vec![2, 3], TensorData::F32(vec![0.0; 5])).err();
        assert!(
            matches!(error, Some(ServeError::InvalidArgument(m)) if m.contains("6 elements but 5"))
        );
    }

    #[test]
    fn element_count_rejects_negative_and_overflowing_shapes() {
        assert_eq!(element_count(&[2, 3]), Ok(6));
        assert!(element_count(&[-1]).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
    }
}
