//! Sentence embeddings with a BERT-family safetensors model (candle-transformers' BERT),
//! with sentence-transformers' semantics: padded and truncated batches, mean pooling over
//! the attention mask, L2 normalisation.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{PaddingStrategy, Tokenizer, TruncationParams};

use crate::StageInfo;
use crate::error::{Error, LoadError, Result};
use crate::source;

/// Texts embedded in one forward pass; larger inputs are cut into batches of this size to
/// bound the memory of the attention scores.
const MAX_BATCH: usize = 32;

/// How token states are pooled into one vector (sentence-transformers' Pooling module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token states under the attention mask.
    Mean,
    /// The state of the first ([CLS]) token.
    Cls,
}

/// A loaded embedding model. Share it (`Arc<Embedder>`) between requests.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    config: Config,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
    bytes: u64,
    stage: StageInfo,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("device", &self.device)
            .field("config", &self.config)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LoadError::InvalidFormat {
        path: path.to_path_buf(),
        format: crate::Format::Safetensors,
        reason: format!("invalid JSON: {e}"),
    })
}

fn optional(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

/// The BERT configuration beside the weights, refusing other model types.
pub(crate) fn read_config(weights: &Path) -> Result<Config, LoadError> {
    let path = source::companion(weights, "config.json")?;
    let raw: serde_json::Value = read_json(&path)?;
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if model_type != "bert" {
        return Err(LoadError::Unsupported {
            path,
            field: "model_type".to_string(),
            value: model_type.to_string(),
            supported: "bert".to_string(),
        });
    }
    serde_json::from_value(raw).map_err(|e| LoadError::InvalidFormat {
        path,
        format: crate::Format::Safetensors,
        reason: format!("not a BERT config: {e}"),
    })
}

/// Bytes of the weights once loaded as f32, read from the safetensors header.
pub(crate) fn weight_bytes(weights: &Path) -> Result<u64, LoadError> {
    let mut file = std::fs::File::open(weights).map_err(|e| LoadError::io(weights, e))?;
    weight_bytes_in(weights, &mut file)
}

/// [`weight_bytes`] from a reader at the start of the file read from `weights`.
pub(crate) fn weight_bytes_in(
    weights: &Path,
    file: &mut impl std::io::Read,
) -> Result<u64, LoadError> {
    let invalid = |reason: String| LoadError::InvalidFormat {
        path: weights.to_path_buf(),
        format: crate::Format::Safetensors,
        reason,
    };
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| LoadError::io(weights, e))?;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|e| invalid(e.to_string()))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)
        .map_err(|e| LoadError::io(weights, e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| invalid(format!("invalid header: {e}")))?;
    let mut bytes = 0u64;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| invalid(format!("tensor {name} has no shape")))?;
        let elems: u64 = shape.iter().map(|d| d.as_u64().unwrap_or(0)).product();
        bytes += elems * 4;
    }
    Ok(bytes)
}

impl Embedder {
    /// Loads the model at `weights` (config.json and tokenizer.json beside it) on `device`.
    pub(crate) fn load(weights: &Path, data: &[u8], device: &Device) -> Result<Self, LoadError> {
        let config = read_config(weights)?;
        let tokenizer_path = source::companion(weights, "tokenizer.json")?;
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let max_tokens = optional(weights.with_file_name("sentence_bert_config.json"))
            .map(|p| read_json::<SentenceBertConfig>(&p))
            .transpose()?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let mut padding = tokenizer.get_padding().cloned().unwrap_or_default();
        padding.strategy = PaddingStrategy::BatchLongest;
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path,
                reason: e.to_string(),
            })?;

        let pooling = match optional(weights.with_file_name("1_Pooling/config.json")) {
            None => Pooling::Mean,
            Some(path) => {
                let c: PoolingConfig = read_json(&path)?;
                match (c.pooling_mode_mean_tokens, c.pooling_mode_cls_token) {
                    (true, false) => Pooling::Mean,
                    (false, true) => Pooling::Cls,
                    _ => {
                        return Err(LoadError::Unsupported {
                            path,
                            field: "pooling_mode_*".to_string(),
                            value: "a mode other than mean or cls alone".to_string(),
                            supported: "mean, cls".to_string(),
                        });
                    }
                }
            }
        };
        let normalize = match optional(weights.with_file_name("modules.json")) {
            None => true,
            Some(path) => read_json::<Vec<Module>>(&path)?
                .iter()
                .any(|m| m.kind.ends_with(".Normalize")),
        };

        let model_err = |e| LoadError::model(weights, e);
        let tensors = candle_core::safetensors::load_buffer(data, device).map_err(model_err)?;
        let bytes = weight_bytes_in(weights, &mut std::io::Cursor::new(data))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &config).map_err(model_err)?;
        tracing::info!(
            model = %weights.display(),
            hidden = config.hidden_size,
            layers = config.num_hidden_layers,
            max_tokens,
            ?pooling,
            normalize,
            "embedding model loaded",
        );
        let last_layer = config.num_hidden_layers.saturating_sub(1);
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            config,
            pooling,
            normalize,
            max_tokens,
            bytes,
            stage: StageInfo {
                device: format!("{device:?}"),
                first_layer: 0,
                last_layer,
                bytes,
            },
        })
    }

    /// Names the device in [`Embedder::stages`].
    pub(crate) fn with_stage(mut self, device: String) -> Self {
        self.stage.device = device;
        self
    }

    /// The one stage the model runs as, with its bytes.
    pub fn stages(&self) -> Vec<StageInfo> {
        vec![self.stage.clone()]
    }

    /// The length of the vectors.
    pub fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    /// The most tokens of a text that count; longer texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of the loaded weights.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// An estimate of the memory a batch of `tokens` tokens in all needs besides the
    /// weights: see [`crate::estimate::activation_bytes`].
    pub fn request_bytes(&self, tokens: usize) -> u64 {
        let c = &self.config;
        crate::estimate::activation_bytes(tokens, c.hidden_size, c.num_hidden_layers, 4)
    }

    /// The token ids the model sees for each text (special tokens added, truncated to
    /// [`Embedder::max_tokens`], no padding).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| {
                let encoding = self.tokenizer.encode(*t, true).map_err(Error::tokenizer)?;
                let n = encoding
                    .get_attention_mask()
                    .iter()
                    .filter(|&&m| m == 1)
                    .count();
                Ok(encoding.get_ids()[..n].to_vec())
            })
            .collect()
    }

    /// One vector per text, in order (unit length when the model normalises).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(MAX_BATCH) {
            out.extend(self.embed_batch(batch)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(Error::tokenizer)?;
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let rows = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &self.device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&rows, 0)?)
        };
        let ids = rows(|e| e.get_ids())?;
        let type_ids = ids.zeros_like()?;
        let mask = rows(|e| e.get_attention_mask())?;
        let states = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let sum = states.broadcast_mul(&mask)?.sum(1)?;
                let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
                sum.broadcast_div(&count)?
            }
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_device(&Device::Cpu)?.to_vec2::<f32>()?)
    }
}
