//! The serving layer's view of a loaded candle model: `gogrid_serve::Backend`
//! for embedders and generators, mapping their errors onto the inference API's.

use std::ops::ControlFlow;
use std::sync::Arc;

use gogrid_pipeline::{Embedder, Generator, Loaded};
use gogrid_serve::{
    Backend, DataType, FinishReason, GenerateParams, Generation, ModelMetadata, ServeError,
    TaskKind, TensorMeta,
};

/// Largest batch a model accepts, whatever the policy says.
const MODEL_MAX_BATCH: usize = 64;

/// A loaded model behind the `Backend` trait.
#[derive(Debug)]
pub struct ModelBackend {
    model: Loaded,
    metadata: ModelMetadata,
}

impl ModelBackend {
    /// Wrap a loaded model.
    pub fn new(model: Loaded) -> Self {
        let metadata = match &model {
            Loaded::Embedder(e) => ModelMetadata {
                platform: "gogrid_candle_bert".into(),
                inputs: vec![TensorMeta::new("text", DataType::Bytes, vec![-1])],
                outputs: vec![TensorMeta::new(
                    "embedding",
                    DataType::F32,
                    vec![-1, i64::try_from(e.dimension()).unwrap_or(i64::MAX)],
                )],
                max_batch_size: MODEL_MAX_BATCH,
            },
            Loaded::Generator(_) => ModelMetadata {
                platform: "gogrid_candle_llama_gguf".into(),
                inputs: vec![TensorMeta::new("text_input", DataType::Bytes, vec![1])],
                outputs: vec![TensorMeta::new("text_output", DataType::Bytes, vec![1])],
                max_batch_size: 1,
            },
        };
        Self { model, metadata }
    }

    /// The model, for status.
    pub fn loaded(&self) -> &Loaded {
        &self.model
    }
}

fn failed(e: gogrid_pipeline::Error) -> ServeError {
    match e {
        gogrid_pipeline::Error::InvalidInput(m) => ServeError::InvalidArgument(m),
        other => ServeError::Internal(other.to_string()),
    }
}

fn embed(e: &Arc<Embedder>, texts: &[String]) -> Result<Vec<Vec<f32>>, ServeError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs).map_err(failed)
}

fn generate(
    g: &Arc<Generator>,
    prompt: &str,
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, ServeError> {
    let ours = gogrid_pipeline::GenerateParams {
        max_tokens: params.max_tokens,
        temperature: params.temperature.unwrap_or(0.0),
        top_p: params.top_p,
        top_k: None,
        seed: params.seed.unwrap_or(0),
    };
    // Stop sequences end the completion at the first match: the text so far is
    // checked after every token.
    let mut text = String::new();
    let mut stopped = false;
    let out = g
        .generate(prompt, &ours, &mut |piece: &str| {
            text.push_str(piece);
            if params
                .stop
                .iter()
                .any(|s| !s.is_empty() && text.ends_with(s.as_str()))
            {
                stopped = true;
                return false;
            }
            on_token(piece).is_continue()
        })
        .map_err(failed)?;
    let finish_reason = match out.finish_reason {
        _ if stopped => FinishReason::Stop,
        gogrid_pipeline::FinishReason::Stop => FinishReason::Stop,
        gogrid_pipeline::FinishReason::Length => FinishReason::Length,
        gogrid_pipeline::FinishReason::Cancelled => FinishReason::Cancelled,
    };
    Ok(Generation {
        prompt_tokens: out.prompt_tokens,
        completion_tokens: out.completion_tokens,
        finish_reason,
    })
}

impl Backend for ModelBackend {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn task(&self) -> TaskKind {
        match self.model {
            Loaded::Embedder(_) => TaskKind::Embedding,
            Loaded::Generator(_) => TaskKind::TextGeneration,
        }
    }

    fn embed(&self, texts: &[String]) -> gogrid_serve::Result<Vec<Vec<f32>>> {
        match &self.model {
            Loaded::Embedder(e) => embed(e, texts),
            Loaded::Generator(_) => Err(ServeError::Unsupported(
                "this model generates text; it does not embed".into(),
            )),
        }
    }

    fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut gogrid_serve::TokenSink<'_>,
    ) -> gogrid_serve::Result<Generation> {
        match &self.model {
            Loaded::Generator(g) => generate(g, prompt, params, on_token),
            Loaded::Embedder(_) => Err(ServeError::Unsupported(
                "this model embeds; it does not generate text".into(),
            )),
        }
    }
}

/// A hollow agent's stand-in for a model (kubemark's "hollow" nodes): it is
/// registered, routed and reported like a loaded model, and refuses any
/// inference, so that one process can play many nodes' control path.
#[derive(Debug)]
pub struct HollowBackend {
    metadata: ModelMetadata,
    task: TaskKind,
}

impl HollowBackend {
    /// A stand-in for a model of `task`.
    pub fn new(task: TaskKind) -> Self {
        Self {
            metadata: ModelMetadata {
                platform: "gogrid_hollow".into(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                max_batch_size: MODEL_MAX_BATCH,
            },
            task,
        }
    }
}

impl Backend for HollowBackend {
    fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    fn task(&self) -> TaskKind {
        self.task
    }
}
