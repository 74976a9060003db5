//! The layers of the quantized llama decoder (rotary embedding, attention, MLP, block,
//! head), each a struct with `forward`, after candle-transformers' `quantized_llama.rs`,
//! with llama.cpp's arithmetic where it differs (f16 KV cache, RMS norm, RoPE tables).
//! Weights are immutable; the KV cache is passed in, so one model serves many requests.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Result, Tensor};

use super::kernels::PackedMatrix;

/// The keys and values one layer has seen so far in one request.
pub(crate) type LayerCache = Option<(Tensor, Tensor)>;

/// Bytes held by a tensor.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// A matrix weight: repacked for this crate's CPU kernels (llama.cpp's arithmetic) where
/// they run its type, otherwise candle's quantized matmul.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Packed(Arc<PackedMatrix>),
    Candle(QMatMul),
}

/// Bytes held by a matmul weight (quantized, repacked, or dequantized when it was a
/// float type).
pub(crate) fn linear_bytes(m: &Linear) -> u64 {
    match m {
        Linear::Packed(p) => p.bytes(),
        Linear::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
        Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => tensor_bytes(t),
    }
}

/// Whether candle holds the weight dequantized (a float type), apart from its QTensor.
pub(crate) fn is_dequantized(m: &Linear) -> bool {
    matches!(
        m,
        Linear::Candle(QMatMul::Tensor(_) | QMatMul::TensorF16(_))
    )
}

/// RMS normalisation computed as ggml does: the mean of squares summed in f64, then
/// `x × (1 / sqrt(mean + eps)) × weight` in f32.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub(crate) fn bytes(&self) -> u64 {
        tensor_bytes(&self.weight)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(D::Minus1)? as f64;
        let mean = (x.sqr()?.to_dtype(DType::F64)?.sum_keepdim(D::Minus1)? / n)?;
        let scale = mean
            .to_dtype(DType::F32)?
            .affine(1.0, self.eps as f32 as f64)?
            .sqrt()?
            .recip()?;
        x.broadcast_mul(&scale)?.broadcast_mul(&self.weight)
    }
}

/// The rotary position embedding tables (interleaved pairs, as GGUF llama weights expect),
/// computed as ggml does: `theta_i = pos × base^(-2/d)^i` by repeated f32 products.
#[derive(Debug, Clone)]
pub(crate) struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    pub(crate) fn new(head_dim: usize, base: f32, max_len: usize, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let theta_scale = base.powf(-2.0 / head_dim as f32);
        let mut cos = Vec::with_capacity(max_len * half);
        let mut sin = Vec::with_capacity(max_len * half);
        for pos in 0..max_len {
            let mut theta = pos as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_len, half), device)?,
            sin: Tensor::from_vec(sin, (max_len, half), device)?,
        })
    }

    /// Rotates `x` of shape (batch, heads, seq, head_dim) starting at position `pos`.
    pub(crate) fn forward(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_b, _h, seq_len, _d) = x.dims4()?;
        let cos = self.cos.narrow(0, pos, seq_len)?;
        let sin = self.sin.narrow(0, pos, seq_len)?;
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
    }

    pub(crate) fn bytes(&self) -> u64 {
        tensor_bytes(&self.cos) + tensor_bytes(&self.sin)
    }

    /// Bytes of the cos and sin tables for `max_len` positions.
    pub(crate) fn table_bytes(head_dim: usize, max_len: usize) -> u64 {
        (2 * max_len * (head_dim / 2) * 4) as u64
    }
}

/// Grouped-query self-attention.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) wq: Linear,
    pub(crate) wk: Linear,
    pub(crate) wv: Linear,
    pub(crate) wo: Linear,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
}

impl Attention {
    /// `x`: (batch, seq, hidden); `mask`: additive (1, 1, seq, kv) or none for one token.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        pos: usize,
        rope: &RotaryEmbedding,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let (b, seq_len, hidden) = x.dims3()?;
        let q = linear(&self.wq, x)?;
        let k = linear(&self.wk, x)?;
        let v = linear(&self.wv, x)?;
        let q = q
            .reshape((b, seq_len, self.n_head, self.head_dim))?
            .transpose(1, 2)?;
        let k = k
            .reshape((b, seq_len, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?;
        let v = v
            .reshape((b, seq_len, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        // Keys and values are cached in f16, as llama.cpp does by default (half the
        // memory); queries and attention weights are rounded to f16 where llama.cpp's
        // f16 matmuls round them, so greedy decoding follows it token for token.
        let q = f16_rounded(&rope.forward(&q, pos)?)?;
        let k = rope.forward(&k, pos)?.to_dtype(DType::F16)?;
        let v = v.to_dtype(DType::F16)?;
        let (k, v) = match cache.take() {
            Some((k_prev, v_prev)) if pos > 0 => (
                Tensor::cat(&[&k_prev, &k], 2)?,
                Tensor::cat(&[&v_prev, &v], 2)?,
            ),
            _ => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));

        let n_rep = self.n_head / self.n_kv_head;
        let k = candle_transformers::utils::repeat_kv(k.to_dtype(DType::F32)?, n_rep)?;
        let v = candle_transformers::utils::repeat_kv(v.to_dtype(DType::F32)?, n_rep)?;
        let att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let att = match mask {
            Some(mask) => att.broadcast_add(mask)?,
            None => att,
        };
        let att = f16_rounded(&candle_nn::ops::softmax_last_dim(&att)?)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, seq_len, hidden))?;
        linear(&self.wo, &y)
    }

    fn bytes(&self) -> u64 {
        [&self.wq, &self.wk, &self.wv, &self.wo]
            .into_iter()
            .map(linear_bytes)
            .sum()
    }
}

/// The SwiGLU feed-forward network.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&linear(&self.gate, x)?)?;
        linear(&self.down, &(gate * linear(&self.up, x)?)?)
    }
}

impl Mlp {
    fn bytes(&self) -> u64 {
        [&self.gate, &self.up, &self.down]
            .into_iter()
            .map(linear_bytes)
            .sum()
    }
}

/// One transformer block: pre-norm attention and pre-norm MLP, each with a residual.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: RmsNorm,
    pub(crate) attn: Attention,
    pub(crate) ffn_norm: RmsNorm,
    pub(crate) mlp: Mlp,
}

impl Block {
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        pos: usize,
        rope: &RotaryEmbedding,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.attn_norm.forward(x)?, mask, pos, rope, cache)?;
        let x = (h + x)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        h + x
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.attn.bytes() + self.mlp.bytes() + self.attn_norm.bytes() + self.ffn_norm.bytes()
    }
}

/// The token embedding, kept quantized (as stored, or repacked when it is also the
/// head's weight): rows are dequantized on lookup.
#[derive(Debug, Clone)]
pub(crate) enum TokenEmbedding {
    Quantized(Arc<QTensor>),
    Packed(Arc<PackedMatrix>),
}

impl TokenEmbedding {
    /// `ids`: (batch, seq) u32 → (batch, seq, hidden) f32.
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Quantized(q) => q.embedding(ids),
            Self::Packed(p) => {
                let (b, seq) = ids.dims2()?;
                let hidden = p.cols();
                let mut out = vec![0f32; b * seq * hidden];
                for (id, row) in ids
                    .flatten_all()?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .zip(out.chunks_exact_mut(hidden))
                {
                    let id = id as usize;
                    if id >= p.rows() {
                        candle_core::bail!(
                            "token id {id} is outside the vocabulary ({})",
                            p.rows()
                        );
                    }
                    p.dequantize_row(id, row);
                }
                Tensor::from_vec(out, (b, seq, hidden), ids.device())
            }
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Self::Quantized(q) => q.storage_size_in_bytes() as u64,
            Self::Packed(p) => p.bytes(),
        }
    }
}

/// The final norm and the projection to vocabulary logits.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) norm: RmsNorm,
    pub(crate) output: Linear,
}

impl Head {
    /// Logits of the last position: (batch, seq, hidden) → (batch, vocab).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(x)?;
        let last = x.dim(1)? - 1;
        let x = x.narrow(1, last, 1)?.squeeze(1)?;
        linear(&self.output, &x)
    }
}

/// Rows from which a CPU matmul dequantizes the weight and multiplies in f32.
pub(crate) const DEQUANTIZED_ROWS: usize = 16;

/// `x @ wᵀ`. A repacked weight runs this crate's kernels for any number of rows. With
/// candle's: one row at a time (decode) runs its quantized kernel, which reads the
/// weights as stored; many rows at once (a prompt) on the CPU dequantize the weight and
/// run the f32 GEMM, which reuses every weight for all rows: candle's quantized CPU
/// matmul recomputes each row's dot products block by block and is 3x slower there.
pub(crate) fn linear(w: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = match w {
        Linear::Packed(p) => return x.contiguous()?.apply_op1_no_bwd(p.as_ref()),
        Linear::Candle(w) => w,
    };
    let rows = x.elem_count() / x.dim(x.rank() - 1)?;
    match w {
        QMatMul::QTensor(q) if rows >= DEQUANTIZED_ROWS && x.device().is_cpu() => {
            let w = q.dequantize(x.device())?;
            let (lead, k) = (x.dims()[..x.rank() - 1].to_vec(), x.dim(x.rank() - 1)?);
            let y = x.reshape((rows, k))?.matmul(&w.t()?)?;
            let mut shape = lead;
            shape.push(w.dim(0)?);
            y.reshape(shape)
        }
        _ => w.forward(x),
    }
}

/// `x` rounded to the nearest f16 value, kept as f32.
fn f16_rounded(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// The additive causal mask for `seq_len` new positions after `pos` cached ones.
pub(crate) fn causal_mask(seq_len: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if seq_len <= 1 {
        return Ok(None);
    }
    let mask = candle_transformers::utils::build_additive_causal_mask(
        seq_len,
        pos,
        None,
        device,
        DType::F32,
    )?;
    Ok(Some(mask))
}

/// The index of the largest value (the first one on ties), for greedy decoding.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
