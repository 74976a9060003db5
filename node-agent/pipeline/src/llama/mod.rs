//! A llama-family decoder read from GGUF with candle's quantized tensors, its layers
//! split into stages that each live on their own device (activations move between them).

mod kernels;
mod layers;
pub mod requant;
pub mod tokenizer;

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{LoadError, Result};
use crate::plan::{ModelBytes, PlannedStage};
use kernels::PackedMatrix;
use layers::{
    Attention, Block, Head, LayerCache, Linear, Mlp, RmsNorm, RotaryEmbedding, TokenEmbedding,
};
use requant::{KernelLog, Requantize};

pub(crate) use layers::argmax;

/// The hyper-parameters of a llama model, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Attention heads for queries.
    pub n_head: usize,
    /// Attention heads for keys and values (grouped-query attention).
    pub n_kv_head: usize,
    /// Size of each head.
    pub head_dim: usize,
    /// Epsilon of the RMS norms.
    pub rms_eps: f64,
    /// Base of the rotary embedding frequencies.
    pub rope_base: f32,
    /// Longest sequence (prompt + completion) the model supports.
    pub context_length: usize,
}

impl LlamaConfig {
    /// Reads the configuration, refusing architectures other than llama.
    pub(crate) fn from_gguf(ct: &Content, path: &Path) -> Result<Self, LoadError> {
        let missing = |field: &str| LoadError::MissingField {
            path: path.to_path_buf(),
            field: field.to_string(),
        };
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| missing("general.architecture"))?;
        if arch != "llama" {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                field: "general.architecture".to_string(),
                value: arch.clone(),
                supported: "llama".to_string(),
            });
        }
        let uint = |key: &str| {
            ct.metadata
                .get(key)
                .and_then(|v| v.to_u64().ok())
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| missing(key))
        };
        let float = |key: &str| match ct.metadata.get(key) {
            Some(Value::F32(v)) => Ok(f64::from(*v)),
            Some(Value::F64(v)) => Ok(*v),
            _ => Err(missing(key)),
        };
        let n_head = uint("llama.attention.head_count")?;
        let hidden = uint("llama.embedding_length")?;
        let n_kv_head = uint("llama.attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || hidden % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(missing("llama.attention.head_count"));
        }
        let head_dim = hidden / n_head;
        let rope_dim = uint("llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                field: "llama.rope.dimension_count".to_string(),
                value: rope_dim.to_string(),
                supported: format!("the head size, {head_dim}"),
            });
        }
        Ok(Self {
            n_layer: uint("llama.block_count")?,
            hidden,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: float("llama.attention.layer_norm_rms_epsilon")?,
            rope_base: float("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
            context_length: uint("llama.context_length").unwrap_or(4096),
        })
    }
}

const BLOCK_WEIGHTS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
const BLOCK_NORMS: [&str; 2] = ["attn_norm", "ffn_norm"];

fn info<'a>(ct: &'a Content, name: &str, path: &Path) -> Result<&'a TensorInfo, LoadError> {
    ct.tensor_infos
        .get(name)
        .ok_or_else(|| LoadError::MissingField {
            path: path.to_path_buf(),
            field: format!("tensor {name}"),
        })
}

/// Resident bytes of a tensor once loaded with `policy` onto a device of this kind: float
/// matrices are held as f32 by candle's matmul, matrices the CPU kernels run are repacked
/// (in groups of eight rows), others are held in their (target) type.
fn resident_bytes(info: &TensorInfo, policy: Requantize, device: &Device, matmul: bool) -> u64 {
    let elems = info.shape.elem_count();
    let row = info.shape.dims().last().copied().unwrap_or(1);
    let dtype = policy
        .target(info.ggml_dtype, row, device)
        .unwrap_or(info.ggml_dtype);
    let bytes = match dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 if matmul => elems * 4,
        _ if matmul && packs(dtype, info.shape.dims(), device) => {
            return kernels::packed_bytes(dtype, elems / row, row);
        }
        _ => elems / dtype.block_size() * dtype.type_size(),
    };
    bytes as u64
}

/// Whether a matrix of this type and shape is repacked for the CPU kernels on `device`.
fn packs(dtype: GgmlDType, dims: &[usize], device: &Device) -> bool {
    device.is_cpu()
        && kernels::supports(dtype)
        && matches!(dims, [_, cols] if cols.is_multiple_of(kernels::layout::QK))
}

/// What the model needs per layer, for the planner. `devices` are the devices it may be
/// placed on: where the requantization policy differs between them, the larger size counts.
pub(crate) fn model_bytes(
    ct: &Content,
    path: &Path,
    policy: Requantize,
    devices: &[&Device],
) -> Result<ModelBytes, LoadError> {
    let config = LlamaConfig::from_gguf(ct, path)?;
    let size = |name: &str, matmul: bool, policy: Requantize| -> Result<u64, LoadError> {
        let info = info(ct, name, path)?;
        Ok(devices
            .iter()
            .map(|d| resident_bytes(info, policy, d, matmul))
            .max()
            .unwrap_or(0))
    };
    let off = Requantize::Off;
    let mut layers = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let mut bytes = 0;
        for w in BLOCK_WEIGHTS {
            bytes += size(&format!("blk.{i}.{w}.weight"), true, policy)?;
        }
        for n in BLOCK_NORMS {
            bytes += size(&format!("blk.{i}.{n}.weight"), false, off)?;
        }
        layers.push(bytes);
    }
    // A tied embedding is also the output matrix: it takes the matmul weights' policy.
    let tied_embedding = !ct.tensor_infos.contains_key("output.weight");
    let mut head = size("output_norm.weight", false, off)?;
    if !tied_embedding {
        head += size("output.weight", true, policy)?;
    }
    let embedding_policy = if tied_embedding { policy } else { off };
    Ok(ModelBytes {
        layers,
        embedding: size("token_embd.weight", tied_embedding, embedding_policy)?,
        head,
        tied_embedding,
        per_stage: RotaryEmbedding::table_bytes(config.head_dim, config.context_length),
    })
}

/// Layers `first_layer..` of the model on one device, with the embedding on the first
/// stage and the head on the last.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) device: Device,
    pub(crate) first_layer: usize,
    embedding: Option<TokenEmbedding>,
    blocks: Vec<Block>,
    head: Option<Head>,
    rope: RotaryEmbedding,
    /// Bytes this stage holds (a weight shared with an earlier stage counts there).
    pub(crate) bytes: u64,
}

impl Stage {
    /// The last layer this stage holds.
    pub(crate) fn last_layer(&self) -> usize {
        self.first_layer + self.blocks.len().saturating_sub(1)
    }

    fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        cache: &mut [LayerCache],
    ) -> candle_core::Result<Tensor> {
        let mut x = match &self.embedding {
            Some(embedding) => embedding.forward(&x.to_device(&self.device)?)?,
            None => x.to_device(&self.device)?,
        };
        let mask = layers::causal_mask(x.dim(1)?, pos, &self.device)?;
        for (block, cache) in self.blocks.iter().zip(cache.iter_mut()) {
            x = block.forward(&x, mask.as_ref(), pos, &self.rope, cache)?;
        }
        match &self.head {
            Some(head) => head.forward(&x),
            None => Ok(x),
        }
    }
}

/// The keys and values of one request, for every layer of every stage.
#[derive(Debug)]
pub struct KvCache {
    stages: Vec<Vec<LayerCache>>,
}

/// A llama model split into stages; immutable once loaded, so one instance serves
/// concurrent requests, each with its own [`KvCache`].
#[derive(Debug)]
pub struct StagedLlama {
    config: LlamaConfig,
    stages: Vec<Stage>,
}

impl StagedLlama {
    /// Loads the stages `plan` describes (devices indexed into `devices`) from the GGUF file.
    pub(crate) fn load<R: Read + Seek>(
        ct: &Content,
        reader: &mut R,
        path: &Path,
        plan: &[PlannedStage],
        devices: &[&Device],
        policy: Requantize,
    ) -> Result<Self, LoadError> {
        let config = LlamaConfig::from_gguf(ct, path)?;
        let model_err = |e| LoadError::model(path, e);
        let mut log = KernelLog::default();
        let mut loader = Loader {
            ct,
            reader,
            path,
            policy,
            log: &mut log,
        };
        let tied = !ct.tensor_infos.contains_key("output.weight");
        // A tied head on the first stage's device shares the embedding's weight.
        let mut tied_head: Option<(Device, Linear)> = None;
        let mut stages = Vec::with_capacity(plan.len());
        for (s, planned) in plan.iter().enumerate() {
            let device = devices[planned.device].clone();
            let mut bytes = 0;
            let mut embedding = None;
            if s == 0 {
                let lookup = if tied {
                    let (head, lookup) = loader.shared_linear("token_embd.weight", &device)?;
                    tied_head = Some((device.clone(), head));
                    lookup
                } else {
                    let q = loader.qtensor("token_embd.weight", &device, false)?;
                    TokenEmbedding::Quantized(Arc::new(q))
                };
                bytes += lookup.bytes();
                embedding = Some(lookup);
            }
            let mut blocks = Vec::new();
            for i in planned.first_layer..=planned.last_layer {
                let block = loader.block(i, &config, &device)?;
                bytes += block.bytes();
                blocks.push(block);
            }
            let mut head = None;
            if s + 1 == plan.len() {
                let norm = loader.norm("output_norm.weight", config.rms_eps, &device)?;
                bytes += norm.bytes();
                let output = match tied_head.take() {
                    Some((d, output)) if d.same_device(&device) => {
                        if layers::is_dequantized(&output) {
                            bytes += layers::linear_bytes(&output);
                        }
                        output
                    }
                    _ => {
                        let name = if tied {
                            "token_embd.weight"
                        } else {
                            "output.weight"
                        };
                        let output = loader.matmul(name, &device)?;
                        bytes += layers::linear_bytes(&output);
                        output
                    }
                };
                head = Some(Head { norm, output });
            }
            let rope = RotaryEmbedding::new(
                config.head_dim,
                config.rope_base,
                config.context_length,
                &device,
            )
            .map_err(model_err)?;
            bytes += rope.bytes();
            stages.push(Stage {
                device,
                first_layer: planned.first_layer,
                embedding,
                blocks,
                head,
                rope,
                bytes,
            });
        }
        log.log(path);
        Ok(Self { config, stages })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub(crate) fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// An empty cache for a new request.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            stages: self
                .stages
                .iter()
                .map(|s| vec![None; s.blocks.len()])
                .collect(),
        }
    }

    /// Runs `tokens` (at positions `pos..`) through every stage and returns the logits of
    /// the last position as f32 on the CPU.
    pub fn forward(&self, tokens: &[u32], pos: usize, cache: &mut KvCache) -> Result<Vec<f32>> {
        let first = self.stages.first().map_or(&Device::Cpu, |s| &s.device);
        let mut x = Tensor::new(tokens, first)?.unsqueeze(0)?;
        for (stage, cache) in self.stages.iter().zip(cache.stages.iter_mut()) {
            x = stage.forward(&x, pos, cache)?;
        }
        Ok(x.squeeze(0)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?)
    }
}

/// Reads tensors for one load, requantizing by the policy and recording types for the log.
struct Loader<'a, R> {
    ct: &'a Content,
    reader: &'a mut R,
    path: &'a Path,
    policy: Requantize,
    log: &'a mut KernelLog,
}

impl<R: Read + Seek> Loader<'_, R> {
    fn qtensor(
        &mut self,
        name: &str,
        device: &Device,
        requantize: bool,
    ) -> Result<QTensor, LoadError> {
        let from = info(self.ct, name, self.path)?.ggml_dtype;
        let row = info(self.ct, name, self.path)?
            .shape
            .dims()
            .last()
            .copied()
            .unwrap_or(1);
        let target = if requantize {
            self.policy.target(from, row, device)
        } else {
            None
        };
        let err = |e| LoadError::model(self.path, e);
        let q = match target {
            None => self.ct.tensor(self.reader, name, device).map_err(err)?,
            Some(to) => {
                let q = self
                    .ct
                    .tensor(self.reader, name, &Device::Cpu)
                    .map_err(err)?;
                requant::requantize(&q, to, device).map_err(err)?
            }
        };
        self.log.record(name, from, q.dtype());
        Ok(q)
    }

    /// The weight repacked for the CPU kernels, when they run it on `device`.
    fn packed(&self, q: &QTensor, device: &Device) -> Result<Option<Arc<PackedMatrix>>, LoadError> {
        if !packs(q.dtype(), q.shape().dims(), device) {
            return Ok(None);
        }
        let packed = PackedMatrix::from_qtensor(q).map_err(|e| LoadError::model(self.path, e))?;
        Ok(packed.map(Arc::new))
    }

    fn matmul(&mut self, name: &str, device: &Device) -> Result<Linear, LoadError> {
        let q = self.qtensor(name, device, true)?;
        if let Some(packed) = self.packed(&q, device)? {
            return Ok(Linear::Packed(packed));
        }
        let m = QMatMul::from_qtensor(q).map_err(|e| LoadError::model(self.path, e))?;
        Ok(Linear::Candle(m))
    }

    /// A matrix weight that is also the token embedding (a tied head), and the lookup
    /// that shares it.
    fn shared_linear(
        &mut self,
        name: &str,
        device: &Device,
    ) -> Result<(Linear, TokenEmbedding), LoadError> {
        let q = self.qtensor(name, device, true)?;
        if let Some(packed) = self.packed(&q, device)? {
            return Ok((
                Linear::Packed(packed.clone()),
                TokenEmbedding::Packed(packed),
            ));
        }
        let weight = Arc::new(q);
        let linear =
            QMatMul::from_arc(weight.clone()).map_err(|e| LoadError::model(self.path, e))?;
        Ok((Linear::Candle(linear), TokenEmbedding::Quantized(weight)))
    }

    fn norm(&mut self, name: &str, eps: f64, device: &Device) -> Result<RmsNorm, LoadError> {
        let q = self.qtensor(name, device, false)?;
        let weight = q
            .dequantize(device)
            .map_err(|e| LoadError::model(self.path, e))?;
        Ok(RmsNorm::new(weight, eps))
    }

    fn block(&mut self, i: usize, c: &LlamaConfig, device: &Device) -> Result<Block, LoadError> {
        let mut m = |w: &str| self.matmul(&format!("blk.{i}.{w}.weight"), device);
        let attn = Attention {
            wq: m("attn_q")?,
            wk: m("attn_k")?,
            wv: m("attn_v")?,
            wo: m("attn_output")?,
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: c.head_dim,
        };
        let mlp = Mlp {
            gate: m("ffn_gate")?,
            up: m("ffn_up")?,
            down: m("ffn_down")?,
        };
        let attn_norm = self.norm(&format!("blk.{i}.attn_norm.weight"), c.rms_eps, device)?;
        let ffn_norm = self.norm(&format!("blk.{i}.ffn_norm.weight"), c.rms_eps, device)?;
        Ok(Block {
            attn_norm,
            attn,
            ffn_norm,
            mlp,
        })
    }
}
