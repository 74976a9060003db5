//! CPU matmul kernels for GGUF Q4_0, Q8_0 and Q4_1 weights in llama.cpp's own arithmetic:
//! weights repacked at load into groups of eight rows, each activation row quantized to
//! 8 bits (Q8_0, or Q8_1 for Q4_1) as ggml does, and every sum taken in the order of
//! ggml's x86 kernels (the `q4_0_8x8` repacked GEMV/GEMM for Q4_0, `vec_dot_q8_0_q8_0` and
//! `vec_dot_q4_1_q8_1` otherwise), for one row (decode) as for many (a prompt). Built
//! when AVX2 and FMA are enabled at compile time; otherwise the model keeps candle's
//! kernels.

#[cfg(all(target_feature = "avx2", target_feature = "fma"))]
mod avx2;
pub(crate) mod layout;
#[cfg(test)]
mod tests;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};

use layout::{Q4_0x8, Q4_1x8, Q8_0x8, QK, ROWS};

/// Whether this build has the kernels (AVX2 and FMA enabled at compile time).
pub(crate) const AVAILABLE: bool = cfg!(all(target_feature = "avx2", target_feature = "fma"));

/// The weight types the model runs through the kernels.
pub(crate) fn supports(dtype: GgmlDType) -> bool {
    AVAILABLE && matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q8_0)
}

/// The weight types the kernels can run.
fn has_kernel(dtype: GgmlDType) -> bool {
    AVAILABLE && matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q8_0 | GgmlDType::Q4_1)
}

/// Bytes a `rows × cols` matrix of `dtype` takes once repacked (the last group of eight
/// rows is padded).
pub(crate) fn packed_bytes(dtype: GgmlDType, rows: usize, cols: usize) -> u64 {
    let blocks = rows.div_ceil(ROWS) * ROWS * (cols / QK);
    (blocks * dtype.type_size()) as u64
}

#[derive(Debug, Clone, PartialEq)]
enum Weights {
    Q4_0(Vec<Q4_0x8>),
    Q8_0(Vec<Q8_0x8>),
    Q4_1(Vec<Q4_1x8>),
}

/// A matrix weight (`rows` outputs × `cols` inputs) repacked for the kernels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackedMatrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

impl PackedMatrix {
    /// Repacks a 2-D CPU QTensor of a supported type; `None` for other types or shapes.
    pub(crate) fn from_qtensor(q: &QTensor) -> Result<Option<Self>> {
        let dims = q.shape().dims();
        let &[rows, cols] = dims else {
            return Ok(None);
        };
        if !has_kernel(q.dtype()) || !cols.is_multiple_of(QK) || !q.device().is_cpu() {
            return Ok(None);
        }
        let data = q.data()?;
        let blocks = cols / QK;
        let weights = match q.dtype() {
            GgmlDType::Q4_0 => Weights::Q4_0(layout::pack_q4_0(&data, rows, blocks)),
            GgmlDType::Q8_0 => Weights::Q8_0(layout::pack_q8_0(&data, rows, blocks)),
            GgmlDType::Q4_1 => Weights::Q4_1(layout::pack_q4_1(&data, rows, blocks)),
            _ => return Ok(None),
        };
        Ok(Some(Self {
            rows,
            cols,
            weights,
        }))
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn dtype(&self) -> GgmlDType {
        match self.weights {
            Weights::Q4_0(_) => GgmlDType::Q4_0,
            Weights::Q8_0(_) => GgmlDType::Q8_0,
            Weights::Q4_1(_) => GgmlDType::Q4_1,
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        packed_bytes(self.dtype(), self.rows, self.cols)
    }

    fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Row `row` dequantized to f32 (an embedding lookup).
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let nb = self.blocks();
        let (g, r) = (row / ROWS, row % ROWS);
        let range = g * nb..(g + 1) * nb;
        let out = out.chunks_exact_mut(QK);
        match &self.weights {
            Weights::Q4_0(w) => w[range]
                .iter()
                .zip(out)
                .for_each(|(b, o)| b.dequantize(r, o)),
            Weights::Q8_0(w) => w[range]
                .iter()
                .zip(out)
                .for_each(|(b, o)| b.dequantize(r, o)),
            Weights::Q4_1(w) => w[range]
                .iter()
                .zip(out)
                .for_each(|(b, o)| b.dequantize(r, o)),
        }
    }

    /// `out = x · Wᵀ` for `x` of `m` rows of `cols` values; `out` gets `m` rows of `rows`.
    pub(crate) fn matmul(&self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len() % self.cols, 0, "input is not whole rows");
        let m = x.len() / self.cols;
        assert_eq!(out.len(), m * self.rows, "output size");
        #[cfg(all(target_feature = "avx2", target_feature = "fma"))]
        run::matmul(self, x, m, out);
        #[cfg(not(all(target_feature = "avx2", target_feature = "fma")))]
        {
            let _ = (x, m, out);
            unreachable!("a PackedMatrix is only built with AVX2 and FMA");
        }
    }
}

#[cfg(all(target_feature = "avx2", target_feature = "fma"))]
mod run {
    //! Drives the AVX2 loops over groups of rows and tiles of activation rows.

    use super::avx2::{self, hsum};
    use super::layout::{self, ActQ8_0, ActQ8_1, ROWS};
    use super::{PackedMatrix, Weights};

    /// The activation rows of one call, quantized once for every group of weights.
    #[derive(Debug)]
    enum Acts {
        Q8_0(Vec<Vec<ActQ8_0>>),
        Q8_1(Vec<Vec<ActQ8_1>>),
    }

    /// Activation rows multiplied together against one group of weights (prefill).
    const TILE: usize = 4;

    fn quantize(p: &PackedMatrix, x: &[f32]) -> Acts {
        let rows = x.chunks_exact(p.cols);
        match p.weights {
            Weights::Q4_0(_) | Weights::Q8_0(_) => Acts::Q8_0(
                rows.map(|row| {
                    let mut blocks = Vec::new();
                    layout::quantize_q8_0(row, &mut blocks);
                    blocks
                })
                .collect(),
            ),
            Weights::Q4_1(_) => Acts::Q8_1(
                rows.map(|row| {
                    let mut blocks = Vec::new();
                    layout::quantize_q8_1(row, &mut blocks);
                    blocks
                })
                .collect(),
            ),
        }
    }

    /// The eight outputs of group `g` for activation rows `rows` (at most [`TILE`]), into
    /// `out[i]` for the `i`-th of them.
    fn group(p: &PackedMatrix, acts: &Acts, g: usize, first: usize, out: &mut [[f32; ROWS]]) {
        let nb = p.blocks();
        let range = g * nb..(g + 1) * nb;
        match (&p.weights, acts) {
            (Weights::Q4_0(w), Acts::Q8_0(a)) => {
                let w = &w[range];
                let a = &a[first..first + out.len()];
                match out.len() {
                    4 => out.copy_from_slice(&avx2::q4_0::<4>(w, [&a[0], &a[1], &a[2], &a[3]])),
                    n => {
                        for i in 0..n {
                            out[i] = avx2::q4_0::<1>(w, [&a[i]])[0];
                        }
                    }
                }
            }
            (Weights::Q8_0(w), Acts::Q8_0(a)) => {
                let w = &w[range];
                let a = &a[first..first + out.len()];
                if out.len() == TILE {
                    for half in 0..ROWS / 2 {
                        let lanes = avx2::q8_0::<2, 4>(w, 2 * half, [&a[0], &a[1], &a[2], &a[3]]);
                        for (o, l) in out.iter_mut().zip(lanes) {
                            o[2 * half] = hsum(l[0]);
                            o[2 * half + 1] = hsum(l[1]);
                        }
                    }
                } else {
                    for (o, a) in out.iter_mut().zip(a) {
                        let [lanes] = avx2::q8_0::<8, 1>(w, 0, [a]);
                        *o = lanes.map(hsum);
                    }
                }
            }
            (Weights::Q4_1(w), Acts::Q8_1(a)) => {
                let w = &w[range];
                let a = &a[first..first + out.len()];
                if out.len() == TILE {
                    for half in 0..ROWS / 2 {
                        let (lanes, summs) =
                            avx2::q4_1::<2, 4>(w, 2 * half, [&a[0], &a[1], &a[2], &a[3]]);
                        for ((o, l), s) in out.iter_mut().zip(lanes).zip(summs) {
                            o[2 * half] = hsum(l[0]) + s[2 * half];
                            o[2 * half + 1] = hsum(l[1]) + s[2 * half + 1];
                        }
                    }
                } else {
                    for (o, a) in out.iter_mut().zip(a) {
                        let ([lanes], [summs]) = avx2::q4_1::<8, 1>(w, 0, [a]);
                        for i in 0..ROWS {
                            o[i] = hsum(lanes[i]) + summs[i];
                        }
                    }
                }
            }
            _ => unreachable!("activations quantized for another weight type"),
        }
    }

    pub(super) fn matmul(p: &PackedMatrix, x: &[f32], m: usize, out: &mut [f32]) {
        let acts = quantize(p, x);
        let n = p.rows;
        let mut tile = [[0f32; ROWS]; TILE];
        for first in (0..m).step_by(TILE) {
            let rows = TILE.min(m - first);
            for g in 0..n.div_ceil(ROWS) {
                group(p, &acts, g, first, &mut tile[..rows]);
                let cols = ROWS.min(n - g * ROWS);
                for (i, t) in tile[..rows].iter().enumerate() {
                    let at = (first + i) * n + g * ROWS;
                    out[at..at + cols].copy_from_slice(&t[..cols]);
                }
            }
        }
    }
}

/// `x · Wᵀ` as a candle op on CPU tensors (`x`: (…, cols) f32 → (…, rows) f32).
impl CustomOp1 for PackedMatrix {
    fn name(&self) -> &'static str {
        "gogrid-packed-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed matmul: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed matmul: contiguous input expected");
        };
        let dims = layout.shape().dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "packed matmul: input {dims:?}, weight has {} columns",
                self.cols
            );
        }
        let x = &data[start..end];
        let mut out = vec![0f32; x.len() / self.cols * self.rows];
        self.matmul(x, &mut out);
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}
