//! Tiny random llama models written with candle's real GGUF writer and quantizer, with a
//! byte-level BPE tokenizer in their metadata like SmolLM2's.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The shape and storage of a tiny llama.
#[derive(Debug, Clone)]
pub struct TinyLlama {
    /// `general.architecture`.
    pub arch: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub context: usize,
    /// The type of the block matrices.
    pub dtype: GgmlDType,
    /// No `output.weight`: the head reuses the embedding.
    pub tied: bool,
    pub seed: u64,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self {
            arch: "llama",
            layers: 4,
            hidden: 64,
            ffn: 128,
            heads: 4,
            kv_heads: 2,
            context: 128,
            dtype: GgmlDType::Q4_1,
            tied: true,
            seed: 7,
        }
    }
}

/// Specials first (control tokens, like SmolLM2's), then the 256 bytes, then merges.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "a"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("l", "l"),
];

/// GPT-2's printable stand-in for each byte.
pub fn byte_chars() -> Vec<char> {
    let mut bytes: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut by_byte = vec!['\0'; 256];
    for (b, c) in bytes.iter().zip(&chars) {
        by_byte[*b as usize] = char::from_u32(*c).expect("valid char");
    }
    by_byte
}

/// The tiny vocabulary.
pub fn tokens() -> Vec<String> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| offset + scale * self.next()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
    }

    /// A vocabulary matrix whose special-token rows are zero, so that random weights
    /// rarely pick an end-of-generation token.
    fn vocab_matrix(&mut self, vocab: usize, hidden: usize) -> Tensor {
        let values: Vec<f32> = (0..vocab * hidden)
            .map(|i| {
                if i / hidden < SPECIALS.len() {
                    0.0
                } else {
                    self.next()
                }
            })
            .collect();
        Tensor::from_vec(values, (vocab, hidden), &Device::Cpu).expect("tensor")
    }
}

fn quantize(t: &Tensor, dtype: GgmlDType) -> QTensor {
    QTensor::quantize(t, dtype).expect("quantize")
}

impl TinyLlama {
    /// Writes the model as a GGUF file at `path`.
    pub fn write(&self, path: &Path) {
        let mut rng = Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let tokens = tokens();
        let vocab = tokens.len();
        let (h, f) = (self.hidden, self.ffn);
        let kv = h / self.heads * self.kv_heads;
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let embd = rng.vocab_matrix(vocab, h);
        tensors.push(("token_embd.weight".into(), quantize(&embd, GgmlDType::Q8_0)));
        for i in 0..self.layers {
            let wscale = 0.3;
            for (name, shape) in [
                ("attn_q", [h, h]),
                ("attn_k", [kv, h]),
                ("attn_v", [kv, h]),
                ("attn_output", [h, h]),
                ("ffn_gate", [f, h]),
                ("ffn_up", [f, h]),
                ("ffn_down", [h, f]),
            ] {
                let w = rng.tensor(&shape, wscale, 0.0);
                tensors.push((format!("blk.{i}.{name}.weight"), quantize(&w, self.dtype)));
            }
            for name in ["attn_norm", "ffn_norm"] {
                let w = rng.tensor(&[h], 0.1, 1.0);
                tensors.push((
                    format!("blk.{i}.{name}.weight"),
                    quantize(&w, GgmlDType::F32),
                ));
            }
        }
        let norm = rng.tensor(&[h], 0.1, 1.0);
        tensors.push(("output_norm.weight".into(), quantize(&norm, GgmlDType::F32)));
        if !self.tied {
            let out = rng.vocab_matrix(vocab, h);
            tensors.push(("output.weight".into(), quantize(&out, GgmlDType::Q8_0)));
        }

        let arch = self.arch;
        let u32v = |v: usize| Value::U32(v as u32);
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        let types: Vec<Value> = (0..vocab)
            .map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 }))
            .collect();
        let metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (format!("{arch}.block_count"), u32v(self.layers)),
            (format!("{arch}.context_length"), u32v(self.context)),
            (format!("{arch}.embedding_length"), u32v(h)),
            (format!("{arch}.feed_forward_length"), u32v(f)),
            (format!("{arch}.attention.head_count"), u32v(self.heads)),
            (
                format!("{arch}.attention.head_count_kv"),
                u32v(self.kv_heads),
            ),
            (format!("{arch}.rope.dimension_count"), u32v(h / self.heads)),
            (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            ),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), strings(tokens.clone())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                strings(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), u32v(1)),
            ("tokenizer.ggml.eos_token_id".into(), u32v(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create gguf"));
        gguf_file::write(&mut file, &metadata, &tensors).expect("write gguf");
    }
}
