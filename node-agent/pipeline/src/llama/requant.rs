//! Requantization at load: weights in a type whose CPU matmul has no SIMD kernel in candle
//! (Q4_1, Q5_0, Q5_1, Q8_1) are converted to one that has (Q8_0 by default), and the
//! kernels in use are logged.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};

/// What requantization to apply to GGUF weights at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    /// Keep every weight as stored: the arithmetic of the file's own types, which is what
    /// llama.cpp runs (the default: see [`AUTO_TARGET`] for why speed does not win here).
    #[default]
    Off,
    /// For speed: requantize matrices whose type has no SIMD CPU kernel in candle (Q4_1,
    /// Q5_0, Q5_1, Q8_1) to [`AUTO_TARGET`], on CPU devices only (GPU kernels handle them).
    Auto,
    /// Requantize every matrix weight of another type to this one, on every device.
    To(GgmlDType),
}

/// The type `Requantize::Auto` converts slow types to on the CPU.
///
/// Measured on SmolLM2-135M (a Q4_1 file), one thread on an AVX2 EPYC, CPU time per
/// decoded token: Q4_1 as stored (candle's generic kernel) 37 ms, requantized to Q8_0
/// 31 ms, to Q4_0 19 ms. Neither keeps the outputs: against llama.cpp on the same file,
/// Q8_0 changes greedy tokens within 5 tokens on one of three prompts (top-2 gaps up to
/// 0.6 logits where llama.cpp's choice differs), Q4_0 from the first token, while the
/// stored Q4_1 differs only at one near-tie (0.12 logits). So `Off` is the default and
/// Q8_0, the closer of the two, is the speed option.
pub const AUTO_TARGET: GgmlDType = GgmlDType::Q8_0;

/// Whether this build has a SIMD CPU matmul kernel for this type: candle's, or this
/// crate's (Q4_0, Q8_0 and Q4_1, see `kernels`).
fn has_fast_cpu_kernel(dtype: GgmlDType) -> bool {
    super::kernels::supports(dtype)
        || !matches!(
            dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
        )
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

impl Requantize {
    /// The type a matrix weight stored as `dtype`, with rows of `row_len` values, takes on
    /// `device`; `None` keeps it as stored.
    pub(crate) fn target(
        self,
        dtype: GgmlDType,
        row_len: usize,
        device: &Device,
    ) -> Option<GgmlDType> {
        let to = match self {
            Self::Off => return None,
            Self::Auto if device.is_cpu() && !is_float(dtype) && !has_fast_cpu_kernel(dtype) => {
                AUTO_TARGET
            }
            Self::Auto => return None,
            Self::To(to) => to,
        };
        (to != dtype && row_len.is_multiple_of(to.block_size())).then_some(to)
    }
}

/// Dequantizes `q` and quantizes it again as `to`, onto `device`.
pub(crate) fn requantize(q: &QTensor, to: GgmlDType, device: &Device) -> Result<QTensor> {
    let values = q.dequantize(&Device::Cpu)?;
    QTensor::quantize_onto(&values, to, device)
}

/// The weight types seen at load, by kind of weight (`attn_q`, `ffn_down`, ...), for the
/// load log line.
#[derive(Debug, Default)]
pub(crate) struct KernelLog {
    kinds: BTreeMap<String, (GgmlDType, GgmlDType)>,
}

impl KernelLog {
    /// Records that weight `name` (a GGUF tensor name) was stored as `from`, runs as `to`.
    pub(crate) fn record(&mut self, name: &str, from: GgmlDType, to: GgmlDType) {
        let kind = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split_once('.'))
            .map_or(name, |(_, kind)| kind);
        let kind = kind.strip_suffix(".weight").unwrap_or(kind);
        self.kinds.insert(kind.to_string(), (from, to));
    }

    /// Logs the CPU features candle's quantized kernels were compiled with and the types.
    pub(crate) fn log(&self, path: &std::path::Path) {
        let weights = self
            .kinds
            .iter()
            .map(|(kind, (from, to))| {
                if from == to {
                    format!("{kind}={from:?}")
                } else {
                    format!("{kind}={from:?}->{to:?}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(
            model = %path.display(),
            avx2 = cfg!(target_feature = "avx2"),
            fma = cfg!(target_feature = "fma"),
            f16c = cfg!(target_feature = "f16c"),
            neon = candle_core::utils::with_neon(),
            threads = candle_core::utils::get_num_threads(),
            weights = %weights,
            "quantized kernels",
        );
        if cfg!(target_arch = "x86_64") && !cfg!(target_feature = "avx2") {
            tracing::warn!(
                "built without AVX2: candle's quantized CPU kernels run their slow generic \
                 path (build with -C target-cpu=x86-64-v3)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_requantizes_only_slow_types_on_the_cpu() {
        let cpu = Device::Cpu;
        let q4_1 = (!super::super::kernels::supports(GgmlDType::Q4_1)).then_some(AUTO_TARGET);
        assert_eq!(Requantize::Auto.target(GgmlDType::Q4_1, 64, &cpu), q4_1);
        assert_eq!(
            Requantize::Auto.target(GgmlDType::Q5_0, 64, &cpu),
            Some(AUTO_TARGET)
        );
        assert_eq!(Requantize::Auto.target(GgmlDType::Q4_0, 64, &cpu), None);
        assert_eq!(Requantize::Auto.target(GgmlDType::Q4K, 256, &cpu), None);
        assert_eq!(Requantize::Auto.target(GgmlDType::F32, 64, &cpu), None);
        assert_eq!(Requantize::Off.target(GgmlDType::Q4_1, 64, &cpu), None);
    }

    #[test]
    fn an_explicit_type_is_skipped_where_rows_do_not_split_into_its_blocks() {
        let to = Requantize::To(GgmlDType::Q4K);
        assert_eq!(to.target(GgmlDType::Q8_0, 576, &Device::Cpu), None);
        assert_eq!(
            to.target(GgmlDType::Q8_0, 512, &Device::Cpu),
            Some(GgmlDType::Q4K)
        );
    }

    #[test]
    fn the_log_groups_weights_by_kind() {
        let mut log = KernelLog::default();
        log.record("blk.0.attn_q.weight", GgmlDType::Q4_1, GgmlDType::Q8_0);
        log.record("blk.7.attn_q.weight", GgmlDType::Q4_1, GgmlDType::Q8_0);
        log.record("token_embd.weight", GgmlDType::Q8_0, GgmlDType::Q8_0);
        assert_eq!(log.kinds.len(), 2);
        assert!(log.kinds.contains_key("attn_q"));
        assert!(log.kinds.contains_key("token_embd"));
    }
}
