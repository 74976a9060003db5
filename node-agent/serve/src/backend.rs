//! The model traits the agent implements: what a model can do and how it is called.

use std::ops::ControlFlow;

use crate::error::{Result, ServeError};
use crate::tensor::{DataType, Tensor};

/// What kind of work a backend does; the serving layer shapes requests accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `BYTES` tensor of N strings in, `FP32 [N, dim]` out ([`Backend::embed`]).
    Embedding,
    /// `BYTES text_input [1]` plus sampling parameters in, `BYTES text_output [1]`
    /// out, tokens streamed as they are made ([`Backend::generate`]).
    TextGeneration,
    /// Any tensors in, any tensors out ([`Backend::infer`]).
    Tensor,
}

/// One input or output as a model declares it; `-1` in `shape` is a variable dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// Data type.
    pub datatype: DataType,
    /// Shape, batch dimension included; `-1` matches any size.
    pub shape: Vec<i64>,
}

impl TensorMeta {
    /// A tensor declaration.
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        Self {
            name: name.into(),
            datatype,
            shape,
        }
    }
}

/// What a model tells clients about itself (the protocol's model metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Platform string, e.g. `"candle_safetensors"`.
    pub platform: String,
    /// Declared inputs; for [`TaskKind::Tensor`] requests are checked against them.
    pub inputs: Vec<TensorMeta>,
    /// Declared outputs.
    pub outputs: Vec<TensorMeta>,
    /// The most rows one backend call accepts (texts for embeddings, requests for
    /// tensor models); 0 means the model does not batch (one request per call).
    pub max_batch_size: usize,
}

/// Sampling settings of one generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature; `None` lets the backend choose.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass; `None` lets the backend choose.
    pub top_p: Option<f64>,
    /// Random seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Stop sequences; the backend stops before emitting any of them.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 16,
            temperature: None,
            top_p: None,
            seed: None,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The token sink asked to stop (the client went away).
    Cancelled,
}

impl FinishReason {
    /// The OpenAI spelling (`"stop"`, `"length"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop | Self::Cancelled => "stop",
            Self::Length => "length",
        }
    }
}

/// The summary of a finished generation (its text went through the token sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// Receives generated text pieces in order; `Break` asks the backend to stop.
pub type TokenSink<'a> = dyn FnMut(&str) -> ControlFlow<()> + 'a;

/// A loaded model. The serving layer calls it from a dedicated worker thread per
/// model version, never from the async runtime, so methods may block for as long
/// as the compute takes. Only the method matching [`Backend::task`] is called.
pub trait Backend: Send + Sync + 'static {
    /// Inputs, outputs, platform and max batch size.
    fn metadata(&self) -> &ModelMetadata;

    /// The kind of work this backend does.
    fn task(&self) -> TaskKind;

    /// Embeds a batch of texts (gathered from several requests): one vector per
    /// text, in order, all of the same length.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let _ = texts;
        Err(ServeError::unsupported(
            "this model does not make embeddings",
        ))
    }

    /// Generates a continuation of `prompt`, handing each piece of text to
    /// `on_token` as soon as it is made and stopping when it returns `Break`.
    fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut TokenSink<'_>,
    ) -> Result<Generation> {
        let _ = (prompt, params, on_token);
        Err(ServeError::unsupported("this model does not generate text"))
    }

    /// Runs a batch of tensor requests (each its list of inputs, already checked
    /// against [`ModelMetadata::inputs`]) and returns each request's outputs, in order.
    fn infer(&self, batch: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
        let _ = batch;
        Err(ServeError::unsupported(
            "this model does not take tensor requests",
        ))
    }
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("task", &self.task())
            .finish_non_exhaustive()
    }
}
