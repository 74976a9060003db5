//! The byte-level BPE tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`),
//! built as a `tokenizers::Tokenizer` that splits words the way llama.cpp does.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, LoadError, Result};

/// llama.cpp's LLAMA3 pre-tokenizer expression.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a generation when the GGUF marks them as control tokens
/// (llama.cpp's end-of-generation list).
const END_OF_GENERATION: [&str; 8] = [
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<end_of_turn>",
    "<|return|>",
];

/// A GGUF model's tokenizer and its special token ids.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    stop: Vec<u32>,
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        other => other.to_u64().ok(),
    }
}

fn strings(v: &Value) -> Option<Vec<&str>> {
    v.to_vec()
        .ok()?
        .iter()
        .map(|s| s.to_string().ok().map(String::as_str))
        .collect()
}

impl GgufTokenizer {
    /// Builds the tokenizer from the GGUF metadata of the file at `path`.
    pub(crate) fn from_gguf(ct: &Content, path: &Path) -> Result<Self, LoadError> {
        let md = |key: &str| ct.metadata.get(key);
        let missing = |field: &str| LoadError::MissingField {
            path: path.to_path_buf(),
            field: field.to_string(),
        };
        let model = md("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                field: "tokenizer.ggml.model".to_string(),
                value: model.clone(),
                supported: "gpt2 (byte-level BPE)".to_string(),
            });
        }
        let tokens = md("tokenizer.ggml.tokens")
            .and_then(strings)
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = md("tokenizer.ggml.merges")
            .and_then(strings)
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let types: Vec<u64> = md("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| int(t).unwrap_or(1)).collect())
            .unwrap_or_default();
        let id = |key: &str| md(key).and_then(int).and_then(|i| u32::try_from(i).ok());
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = md("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let pre = md("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("gpt2", String::as_str);

        let tokenizer_error = |reason: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tokenizer_error(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        match pre {
            // llama.cpp: "\p{N}" then the GPT-2 expression; HF: Digits + ByteLevel.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => {
                inner.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    byte_level.into(),
                ])));
            }
            "gpt2" | "gpt-2" => {
                inner.with_pre_tokenizer(Some(byte_level));
            }
            "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_REGEX.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tokenizer_error(e.to_string()))?;
                inner.with_pre_tokenizer(Some(Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])));
            }
            other => {
                return Err(LoadError::Unsupported {
                    path: path.to_path_buf(),
                    field: "tokenizer.ggml.pre".to_string(),
                    value: other.to_string(),
                    supported: "smollm, starcoder, gpt2, llama3 and their equivalents".to_string(),
                });
            }
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control (3) and user-defined (4) tokens are matched whole and hidden on decode.
        let specials: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == 3 || t == 4)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| tokenizer_error(e.to_string()))?;

        let mut stop: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .into_iter()
            .filter_map(id)
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if types.get(i) == Some(&3) && END_OF_GENERATION.contains(t) {
                stop.push(i as u32);
            }
        }
        stop.sort_unstable();
        stop.dedup();
        Ok(Self {
            inner,
            bos,
            add_bos,
            stop,
        })
    }

    /// The token ids of `text`, with BOS first when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(Error::tokenizer)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(Error::tokenizer)
    }

    /// Whether `id` ends a generation (EOS, EOT and the end-of-generation control tokens).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.binary_search(&id).is_ok()
    }

    /// The underlying `tokenizers` tokenizer (for incremental decoding).
    pub(crate) fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
