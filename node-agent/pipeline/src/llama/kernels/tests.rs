//! The kernels against three references: a scalar transcription of ggml's arithmetic
//! (bit-for-bit equal), an f64 product of the dequantized weights and the unquantized
//! input (within the activation quantization's error bound), and candle's QMatMul.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use proptest::prelude::*;

use super::layout::{self, QK};
use super::{PackedMatrix, has_kernel as supports};

/// Deterministic pseudo-random values in about [-1, 1] with a few larger outliers.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 37 == 0 { v * 6.0 } else { v }
        })
        .collect()
}

fn qtensor(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> QTensor {
    let w =
        Tensor::from_vec(values(seed, rows * cols), (rows, cols), &Device::Cpu).expect("weights");
    QTensor::quantize(&w, dtype).expect("quantize")
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn unsigned_nibbles(qs: &[u8]) -> [i32; QK] {
    std::array::from_fn(|j| {
        i32::from(if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        })
    })
}

fn hsum(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// ggml's x86 arithmetic, one scalar step at a time, on the GGUF bytes as stored.
fn ggml_reference(q: &QTensor, x: &[f32]) -> Vec<f32> {
    let (rows, cols) = q.shape().dims2().expect("2-D");
    let data = q.data().expect("data");
    let nb = cols / QK;
    let mut out = Vec::new();
    for xrow in x.chunks_exact(cols) {
        let (mut a8_0, mut a8_1) = (Vec::new(), Vec::new());
        layout::quantize_q8_0(xrow, &mut a8_0);
        layout::quantize_q8_1(xrow, &mut a8_1);
        for r in 0..rows {
            let y = match q.dtype() {
                GgmlDType::Q4_0 => {
                    let mut acc = 0f32;
                    for (b, a) in a8_0.iter().enumerate() {
                        let block = &data[(r * nb + b) * 18..][..18];
                        let u = unsigned_nibbles(&block[2..]);
                        let isum: i32 = (0..QK).map(|j| (u[j] - 8) * i32::from(a.qs[j])).sum();
                        acc = (isum as f32).mul_add(f16_at(block, 0) * a.d, acc);
                    }
                    acc
                }
                GgmlDType::Q8_0 => {
                    let mut lanes = [0f32; 8];
                    for (b, a) in a8_0.iter().enumerate() {
                        let block = &data[(r * nb + b) * 34..][..34];
                        let d = f16_at(block, 0) * a.d;
                        for (i, lane) in lanes.iter_mut().enumerate() {
                            let sum: i32 = (4 * i..4 * i + 4)
                                .map(|j| i32::from(block[2 + j] as i8) * i32::from(a.qs[j]))
                                .sum();
                            *lane = d.mul_add(sum as f32, *lane);
                        }
                    }
                    hsum(lanes)
                }
                GgmlDType::Q4_1 => {
                    let (mut lanes, mut summs) = ([0f32; 8], 0f32);
                    for (b, a) in a8_1.iter().enumerate() {
                        let block = &data[(r * nb + b) * 20..][..20];
                        summs += f16_at(block, 2) * a.s;
                        let d = f16_at(block, 0) * a.d;
                        let u = unsigned_nibbles(&block[4..]);
                        for (i, lane) in lanes.iter_mut().enumerate() {
                            let sum: i32 =
                                (4 * i..4 * i + 4).map(|j| u[j] * i32::from(a.qs[j])).sum();
                            *lane = d.mul_add(sum as f32, *lane);
                        }
                    }
                    hsum(lanes) + summs
                }
                other => panic!("no reference for {other:?}"),
            };
            out.push(y);
        }
    }
    out
}

fn packed(q: &QTensor) -> PackedMatrix {
    PackedMatrix::from_qtensor(q)
        .expect("repack")
        .expect("a supported type")
}

fn run(p: &PackedMatrix, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / p.cols() * p.rows()];
    p.matmul(x, &mut out);
    out
}

const TYPES: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q4_1];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_kernels_compute_ggml_s_arithmetic_bit_for_bit(
        t in 0..3usize,
        rows in 1..45usize,
        blocks in 1..21usize,
        m in 1..11usize,
        seed in any::<u64>(),
    ) {
        if !supports(TYPES[t]) {
            return Ok(());
        }
        let cols = blocks * QK;
        let q = qtensor(TYPES[t], rows, cols, seed);
        let x = values(seed ^ 0xABCD, m * cols);
        let ours = run(&packed(&q), &x);
        let theirs = ggml_reference(&q, &x);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            prop_assert_eq!(a.to_bits(), b.to_bits(), "{:?} {}x{} m={} output {}: {} vs {}",
                TYPES[t], rows, cols, m, i, a, b);
        }
    }
}

/// The largest error that quantizing `x` to 8 bits per block can add to `w · x`: each
/// value moves by at most half a step (`max|x| / 254`) plus the f16 rounding of the scale
/// (2⁻¹¹ relative), and the f32 sums add a little on top.
fn bound(w: &[f32], x: &[f32]) -> f64 {
    let mut err = 0f64;
    for (wb, xb) in w.chunks_exact(QK).zip(x.chunks_exact(QK)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (&wi, &xi) in wb.iter().zip(xb) {
            err += (wi as f64).abs() * (amax / 254.0 + (xi as f64).abs() / 2048.0);
        }
    }
    let mag: f64 = w
        .iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    err * 1.01 + mag * 1e-5
}

#[test]
fn the_kernels_equal_the_f64_product_of_the_dequantized_weights_within_the_bound() {
    for dtype in TYPES.into_iter().filter(|&t| supports(t)) {
        for (rows, cols, m) in [(576, 576, 1), (197, 576, 3), (61, 1536, 9), (8, 32, 17)] {
            let q = qtensor(dtype, rows, cols, rows as u64);
            let w: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1())
                .expect("dequantize");
            let x = values(cols as u64, m * cols);
            let ours = run(&packed(&q), &x);
            for (i, xrow) in x.chunks_exact(cols).enumerate() {
                for (r, wrow) in w.chunks_exact(cols).enumerate() {
                    let exact: f64 = wrow
                        .iter()
                        .zip(xrow)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    let got = ours[i * rows + r] as f64;
                    let tol = bound(wrow, xrow);
                    assert!(
                        (got - exact).abs() <= tol,
                        "{dtype:?} {rows}x{cols} row {i} output {r}: {got} vs {exact} (bound {tol})"
                    );
                }
            }
        }
    }
}

#[test]
fn the_kernels_agree_with_candle_s_quantized_matmul() {
    for dtype in TYPES.into_iter().filter(|&t| supports(t)) {
        for (rows, cols, m) in [(576, 576, 1), (200, 1536, 2), (43, 128, 5)] {
            let q = qtensor(dtype, rows, cols, 7 + rows as u64);
            let x = values(3, m * cols);
            let ours = run(&packed(&q), &x);
            let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).expect("x");
            let candle: Vec<f32> = QMatMul::from_qtensor(q)
                .and_then(|mm| mm.forward(&xt)?.flatten_all()?.to_vec1())
                .expect("candle");
            let scale = candle.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in ours.iter().zip(&candle).enumerate() {
                // Both quantize the input to 8 bits; they round some values differently.
                assert!(
                    (a - b).abs() <= 0.02 * scale,
                    "{dtype:?} output {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn a_row_dequantizes_from_the_repacked_layout_as_candle_dequantizes_it() {
    for dtype in TYPES.into_iter().filter(|&t| supports(t)) {
        let (rows, cols) = (19, 576);
        let q = qtensor(dtype, rows, cols, 5);
        let w: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("dequantize");
        let p = packed(&q);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            p.dequantize_row(r, &mut row);
            assert_eq!(row, w[r * cols..(r + 1) * cols], "{dtype:?} row {r}");
        }
    }
}

#[test]
fn activations_quantize_as_ggml_does_ties_to_even_and_the_scale_from_127_over_max() {
    let mut x = vec![0f32; QK];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[3] = -2.5;
    x[4] = -0.5;
    let mut blocks = Vec::new();
    layout::quantize_q8_0(&x, &mut blocks);
    assert_eq!(blocks[0].qs[..5], [127, 2, 4, -2, 0]);
    assert_eq!(blocks[0].d, 1.0);
    assert_eq!(blocks[0].offset, 8 * (127 + 2 + 4 - 2));
    let mut q8_1 = Vec::new();
    layout::quantize_q8_1(&x, &mut q8_1);
    assert_eq!(q8_1[0].s, 131.0);
    layout::quantize_q8_0(&[0.0; QK], &mut blocks);
    assert_eq!((blocks[0].qs, blocks[0].d), ([0; QK], 0.0));
}

#[test]
fn padded_bytes_count_the_last_group_of_eight_rows() {
    assert_eq!(
        super::packed_bytes(GgmlDType::Q4_0, 576, 576),
        576 * 18 * 18
    );
    assert_eq!(super::packed_bytes(GgmlDType::Q8_0, 9, 64), 16 * 2 * 34);
}
