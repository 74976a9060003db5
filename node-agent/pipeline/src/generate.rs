//! Text generation with a staged GGUF llama: prompt completion, greedy or seeded
//! sampling, streamed token by token. Each request gets its own KV cache; the weights are
//! shared by every request.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::StageInfo;
use crate::error::{Error, LoadError, Result};
use crate::llama::requant::Requantize;
use crate::llama::tokenizer::GgufTokenizer;
use crate::llama::{LlamaConfig, StagedLlama, argmax};
use crate::plan::PlannedStage;

/// How to generate a completion.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The most tokens to generate (the context length may stop it earlier).
    pub max_tokens: usize,
    /// Sampling temperature; `0` is greedy decoding, deterministic.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed and prompt give the same completion.
    pub seed: u64,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: 0,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` (or the context length) was reached.
    Length,
    /// The token callback asked to stop.
    Cancelled,
}

impl FinishReason {
    /// The name used in APIs: `stop`, `length`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOutput {
    /// The completion's text (the prompt not included).
    pub text: String,
    /// The completion's token ids (the end-of-generation token not included).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (`tokens.len()`).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// A loaded text-generation model. Share it (`Arc<Generator>`) between requests: `generate`
/// takes `&self` and keeps each request's state to itself.
#[derive(Debug)]
pub struct Generator {
    model: StagedLlama,
    tokenizer: GgufTokenizer,
    stage_names: Vec<String>,
}

impl Generator {
    /// Loads the GGUF llama whose verified bytes, read from `path`, are `data` into the
    /// planned stages.
    pub(crate) fn load(
        path: &Path,
        data: &[u8],
        ct: &Content,
        plan: &[PlannedStage],
        devices: &[&Device],
        policy: Requantize,
    ) -> Result<Self, LoadError> {
        let tokenizer = GgufTokenizer::from_gguf(ct, path)?;
        let mut reader = Cursor::new(data);
        let model = StagedLlama::load(ct, &mut reader, path, plan, devices, policy)?;
        let stage_names = (0..plan.len()).map(|i| format!("stage{i}")).collect();
        Ok(Self {
            model,
            tokenizer,
            stage_names,
        })
    }

    /// Names the stages' devices (in stage order) for [`Generator::stages`].
    pub(crate) fn set_stage_names(&mut self, names: Vec<String>) {
        self.stage_names = names;
    }

    /// The stages as loaded, with the bytes each holds.
    pub fn stages(&self) -> Vec<StageInfo> {
        self.model
            .stages()
            .iter()
            .zip(&self.stage_names)
            .map(|(s, name)| StageInfo {
                device: name.clone(),
                first_layer: s.first_layer,
                last_layer: s.last_layer(),
                bytes: s.bytes,
            })
            .collect()
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The staged model itself (logits for a token sequence, for tests and tools).
    pub fn model(&self) -> &StagedLlama {
        &self.model
    }

    /// Completes `prompt`, calling `on_token` with each new piece of text as soon as it
    /// is whole UTF-8; `on_token` returns `false` to stop.
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateOutput> {
        let ids = self.tokenizer.encode(prompt)?;
        self.generate_ids(&ids, params, on_token)
    }

    /// Like [`Generator::generate`], from prompt token ids.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerateOutput> {
        let context = self.model.config().context_length;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".to_string()));
        }
        if prompt.len() >= context {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens, the model's context holds {context}",
                prompt.len()
            )));
        }
        let vocab = self.tokenizer.inner().get_vocab_size(true);
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        let mut sampler = Sampler::new(params)?;
        let max_tokens = params.max_tokens.min(context - prompt.len());
        let mut output = GenerateOutput {
            text: String::new(),
            tokens: Vec::new(),
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            finish_reason: FinishReason::Length,
        };
        if max_tokens == 0 {
            return Ok(output);
        }
        let mut cache = self.model.new_cache();
        let mut logits = self.model.forward(prompt, 0, &mut cache)?;
        let mut stream = self.tokenizer.inner().decode_stream(true);
        loop {
            let next = sampler.sample(&logits)?;
            if self.tokenizer.is_stop(next) {
                output.finish_reason = FinishReason::Stop;
                break;
            }
            output.tokens.push(next);
            if let Some(piece) = stream.step(next).map_err(Error::tokenizer)? {
                output.text.push_str(&piece);
                if !on_token(&piece) {
                    output.finish_reason = FinishReason::Cancelled;
                    break;
                }
            }
            if output.tokens.len() == max_tokens {
                break;
            }
            let pos = prompt.len() + output.tokens.len() - 1;
            logits = self.model.forward(&[next], pos, &mut cache)?;
        }
        if output.finish_reason != FinishReason::Cancelled {
            // The stream holds back pieces that are not whole UTF-8 yet: flush them.
            let full = self.tokenizer.decode(&output.tokens)?;
            if let Some(rest) = full.strip_prefix(output.text.as_str())
                && !rest.is_empty()
            {
                on_token(rest);
            }
            output.text = full;
        }
        output.completion_tokens = output.tokens.len();
        Ok(output)
    }

    /// An estimate of the memory one request of `tokens` tokens (prompt + completion)
    /// needs besides the weights: see [`crate::estimate::activation_bytes`].
    pub fn request_bytes(&self, tokens: usize) -> u64 {
        let c = self.model.config();
        crate::estimate::activation_bytes(tokens, c.hidden, c.n_layer, 4)
    }
}

/// Picks the next token: argmax at temperature 0, else candle's seeded sampler.
enum Sampler {
    Greedy,
    Sample(Box<LogitsProcessor>),
}

impl Sampler {
    fn new(params: &GenerateParams) -> Result<Self> {
        let t = params.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(Error::InvalidInput(format!(
                "temperature {t} is not a finite number >= 0"
            )));
        }
        if let Some(p) = params.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::InvalidInput(format!("top_p {p} is not in (0, 1]")));
        }
        if params.top_k == Some(0) {
            return Err(Error::InvalidInput("top_k must be at least 1".to_string()));
        }
        if t == 0.0 {
            return Ok(Self::Greedy);
        }
        let sampling = match (params.top_k, params.top_p) {
            (Some(k), Some(p)) => Sampling::TopKThenTopP {
                k,
                p,
                temperature: t,
            },
            (Some(k), None) => Sampling::TopK { k, temperature: t },
            (None, Some(p)) => Sampling::TopP { p, temperature: t },
            (None, None) => Sampling::All { temperature: t },
        };
        Ok(Self::Sample(Box::new(LogitsProcessor::from_sampling(
            params.seed,
            sampling,
        ))))
    }

    fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        match self {
            Self::Greedy => Ok(argmax(logits)),
            Self::Sample(p) => Ok(p.sample(&Tensor::new(logits, &Device::Cpu)?)?),
        }
    }
}
