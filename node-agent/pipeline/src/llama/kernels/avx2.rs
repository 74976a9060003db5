//! The AVX2 inner loops (safe intrinsics from `safe_arch`, compiled only when the build
//! enables AVX2 and FMA): one group of eight weight rows against one to four quantized
//! activation rows, each sum in the order llama.cpp's x86 kernels use, so the results are
//! bit-for-bit ggml's.

use half::f16;
use half::slice::HalfFloatSliceExt;
use safe_arch::{
    abs_i8_m256i, add_i16_m256i, add_m256, bitand_m256i, convert_to_m256_from_i32_m256i,
    fused_mul_add_m256, m256, m256i, mul_i16_horizontal_add_m256i, mul_m256,
    mul_u8i8_add_horizontal_saturating_m256i, prefetch_t0, set_splat_i8_m256i, set_splat_i16_m256i,
    set_splat_i32_m256i, set_splat_m256, shr_imm_u16_m256i, sign_apply_i8_m256i, sub_i32_m256i,
    zeroed_m256, zeroed_m256i,
};

use super::layout::{ActQ8_0, ActQ8_1, Q4_0x8, Q4_1x8, Q8_0x8, ROWS};

/// Blocks ahead of the current one whose cache lines are requested.
const AHEAD: usize = 4;

fn f16x8(d: &[f16; ROWS]) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    d.convert_to_f32_slice(&mut out);
    out
}

/// ggml's `hsum_float_8`: the eight lanes of one dot product added in its order.
pub(super) fn hsum(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// Sums of 4 adjacent `u8 × i8` products, as 8 `i32` lanes (`maddubs` then `madd` by 1).
fn dot4(u: m256i, s: m256i) -> m256i {
    let ones = set_splat_i16_m256i(1);
    mul_i16_horizontal_add_m256i(mul_u8i8_add_horizontal_saturating_m256i(u, s), ones)
}

/// Q4_0 (`q4_0_8x8` repacked) × Q8_0: the eight rows' results for each activation row,
/// `acc = fma(Σ_block (u - 8)·a, d_w·d_a, acc)` block after block as llama.cpp does.
pub(super) fn q4_0<const R: usize>(w: &[Q4_0x8], acts: [&[ActQ8_0]; R]) -> [[f32; ROWS]; R] {
    let m4 = set_splat_i8_m256i(0x0F);
    let ones = set_splat_i16_m256i(1);
    let mut acc = [zeroed_m256(); R];
    for (b, wb) in w.iter().enumerate() {
        if let Some(ahead) = w.get(b + 2 * AHEAD) {
            prefetch_t0(&ahead.d);
            prefetch_t0(&ahead.qs[3]);
        }
        let dw = m256::from(f16x8(&wb.d));
        let mut s16 = [zeroed_m256i(); R];
        for (c, chunk) in wb.qs.iter().enumerate() {
            let raw = m256i::from(*chunk);
            let lo = bitand_m256i(raw, m4);
            let hi = bitand_m256i(shr_imm_u16_m256i::<4>(raw), m4);
            for (s, act) in s16.iter_mut().zip(&acts) {
                let a = &act[b];
                let plo = mul_u8i8_add_horizontal_saturating_m256i(lo, m256i::from(a.steps[2 * c]));
                let phi =
                    mul_u8i8_add_horizontal_saturating_m256i(hi, m256i::from(a.steps[2 * c + 1]));
                *s = add_i16_m256i(*s, add_i16_m256i(plo, phi));
            }
        }
        for ((acc, s), act) in acc.iter_mut().zip(s16).zip(&acts) {
            let a = &act[b];
            let sum = sub_i32_m256i(
                mul_i16_horizontal_add_m256i(s, ones),
                set_splat_i32_m256i(a.offset),
            );
            let scale = mul_m256(dw, set_splat_m256(a.d));
            *acc = fused_mul_add_m256(convert_to_m256_from_i32_m256i(sum), scale, *acc);
        }
    }
    acc.map(|a| a.to_array())
}

/// Q8_0 × Q8_0 for rows `first..first + W` of the group: each product's eight lanes
/// (`vec_dot_q8_0_q8_0`), for [`hsum`].
pub(super) fn q8_0<const W: usize, const R: usize>(
    w: &[Q8_0x8],
    first: usize,
    acts: [&[ActQ8_0]; R],
) -> [[[f32; 8]; W]; R] {
    let mut acc = [[zeroed_m256(); W]; R];
    for (b, wb) in w.iter().enumerate() {
        if let Some(ahead) = w.get(b + AHEAD) {
            ahead.qs[first..first + W]
                .iter()
                .step_by(2)
                .for_each(prefetch_t0);
        }
        let dw = f16x8(&wb.d);
        for i in 0..W {
            let x = m256i::from(wb.qs[first + i]);
            let ax = abs_i8_m256i(x);
            for (acc, act) in acc.iter_mut().zip(&acts) {
                let a = &act[b];
                let p = dot4(ax, sign_apply_i8_m256i(m256i::from(a.qs), x));
                let d = set_splat_m256(dw[first + i] * a.d);
                acc[i] = fused_mul_add_m256(d, convert_to_m256_from_i32_m256i(p), acc[i]);
            }
        }
    }
    acc.map(|rows| rows.map(|a| a.to_array()))
}

/// Q4_1 × Q8_1 for rows `first..first + W` of the group (`W` even, `first` even): each
/// product's eight lanes (`vec_dot_q4_1_q8_1`), and the `Σ m·s` term of every row of the
/// group, added after [`hsum`].
pub(super) fn q4_1<const W: usize, const R: usize>(
    w: &[Q4_1x8],
    first: usize,
    acts: [&[ActQ8_1]; R],
) -> ([[[f32; 8]; W]; R], [[f32; ROWS]; R]) {
    let m4 = set_splat_i8_m256i(0x0F);
    let mut acc = [[zeroed_m256(); W]; R];
    let mut summs = [zeroed_m256(); R];
    for (b, wb) in w.iter().enumerate() {
        if let Some(ahead) = w.get(b + 2 * AHEAD) {
            prefetch_t0(&ahead.d);
            ahead.qs[first / 2..(first + W) / 2]
                .iter()
                .for_each(prefetch_t0);
        }
        let dw = f16x8(&wb.d);
        let mw = m256::from(f16x8(&wb.m));
        for (summs, act) in summs.iter_mut().zip(&acts) {
            *summs = add_m256(*summs, mul_m256(mw, set_splat_m256(act[b].s)));
        }
        for p in 0..W / 2 {
            let raw = m256i::from(wb.qs[first / 2 + p]);
            let lo = bitand_m256i(raw, m4);
            let hi = bitand_m256i(shr_imm_u16_m256i::<4>(raw), m4);
            for (i, u) in [(2 * p, lo), (2 * p + 1, hi)] {
                for (acc, act) in acc.iter_mut().zip(&acts) {
                    let a = &act[b];
                    let xy = dot4(u, m256i::from(a.qs));
                    let d = set_splat_m256(dw[first + i] * a.d);
                    acc[i] = fused_mul_add_m256(d, convert_to_m256_from_i32_m256i(xy), acc[i]);
                }
            }
        }
    }
    (
        acc.map(|rows| rows.map(|a| a.to_array())),
        summs.map(|s| s.to_array()),
    )
}
