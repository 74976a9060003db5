//! The repacked weight layouts (eight rows of a GGUF matrix per group, block by block)
//! and the 8-bit activation blocks, quantized exactly as ggml's AVX2 `quantize_row_q8_0`
//! and `quantize_row_q8_1` do.

use half::f16;

/// Values per quantization block (Q4_0, Q4_1, Q8_0, Q8_1).
pub(crate) const QK: usize = 32;
/// Rows per repacked group.
pub(crate) const ROWS: usize = 8;

/// Block `b` of eight rows of Q4_0 weights, for llama.cpp's repacked `q4_0_8x8` arithmetic:
/// the 4-bit values stay unsigned (`w = u - 8`). Chunk `c` holds, for row `r`, bytes
/// `4r..4r+4`: the low nibbles are elements `8c..8c+4`, the high nibbles `8c+4..8c+8`,
/// so one 32-bit lane of a vector is one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Q4_0x8 {
    pub(crate) d: [f16; ROWS],
    pub(crate) qs: [[u8; 32]; 4],
}

/// Block `b` of eight rows of Q8_0 weights, each row's 32 values as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Q8_0x8 {
    pub(crate) d: [f16; ROWS],
    pub(crate) qs: [[i8; 32]; ROWS],
}

/// Block `b` of eight rows of Q4_1 weights: chunk `p` holds rows `2p` (low nibbles) and
/// `2p + 1` (high nibbles), element `j` in byte `j`, the order ggml's `vec_dot_q4_1_q8_1`
/// unpacks them in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Q4_1x8 {
    pub(crate) d: [f16; ROWS],
    pub(crate) m: [f16; ROWS],
    pub(crate) qs: [[u8; 32]; 4],
}

/// One block of an activation row quantized to Q8_0, with each group of four values also
/// repeated across a whole vector (the Q4_0 kernel multiplies eight rows by one group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActQ8_0 {
    pub(crate) qs: [i8; QK],
    /// Group `s` (values `4s..4s+4`) repeated eight times.
    pub(crate) steps: [[i8; 32]; 8],
    /// The block scale, rounded to f16 as stored by ggml.
    pub(crate) d: f32,
    /// `8 × Σ qs`: what the Q4_0 offset of 8 takes off each row's sum.
    pub(crate) offset: i32,
}

/// One block of an activation row quantized to Q8_1 (the type ggml pairs with Q4_1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ActQ8_1 {
    pub(crate) qs: [i8; QK],
    pub(crate) d: f32,
    /// `d × Σ qs`, rounded to f16 as stored by ggml.
    pub(crate) s: f32,
}

/// ggml's AVX2 quantization of 32 values to 8 bits: `d = max|x| / 127`, `x × (127 /
/// max|x|)` rounded half to even. Returns the values, the f32 scale and its f16 rounding.
fn quantize_block(x: &[f32]) -> ([i8; QK], f32, f16) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    (qs, d, f16::from_f32(d))
}

/// Quantizes one activation row (its length a multiple of 32) to Q8_0 blocks.
pub(crate) fn quantize_q8_0(x: &[f32], out: &mut Vec<ActQ8_0>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(|block| {
        let (qs, _, d) = quantize_block(block);
        let mut steps = [[0i8; 32]; 8];
        for (s, step) in steps.iter_mut().enumerate() {
            for lane in step.chunks_exact_mut(4) {
                lane.copy_from_slice(&qs[4 * s..4 * s + 4]);
            }
        }
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        ActQ8_0 {
            qs,
            steps,
            d: d.to_f32(),
            offset: 8 * sum,
        }
    }));
}

/// Quantizes one activation row (its length a multiple of 32) to Q8_1 blocks.
pub(crate) fn quantize_q8_1(x: &[f32], out: &mut Vec<ActQ8_1>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(|block| {
        let (qs, d32, d) = quantize_block(block);
        let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
        ActQ8_1 {
            qs,
            d: d.to_f32(),
            s: f16::from_f32(d32 * sum as f32).to_f32(),
        }
    }));
}

/// The f16 at `bytes[at..at + 2]` (little-endian, as GGUF stores it).
fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The 32 unsigned 4-bit values of a ggml Q4 block's `qs` (element `i` in the low nibble
/// of byte `i`, element `i + 16` in its high nibble).
fn nibbles(qs: &[u8]) -> [u8; QK] {
    let mut u = [0u8; QK];
    for i in 0..16 {
        u[i] = qs[i] & 0x0F;
        u[i + 16] = qs[i] >> 4;
    }
    u
}

/// Splits a GGUF matrix's raw bytes (`rows` rows of `blocks` blocks of `block_bytes`) into
/// groups of eight rows; the last group is padded with `None` rows.
fn rows_of(
    data: &[u8],
    rows: usize,
    blocks: usize,
    block_bytes: usize,
) -> impl Iterator<Item = [Option<&[u8]>; ROWS]> {
    let row_bytes = blocks * block_bytes;
    (0..rows.div_ceil(ROWS)).map(move |g| {
        std::array::from_fn(|r| {
            let row = g * ROWS + r;
            (row < rows).then(|| &data[row * row_bytes..(row + 1) * row_bytes])
        })
    })
}

/// Repacks Q4_0 rows (18-byte blocks: f16 scale, 16 bytes of nibbles).
pub(crate) fn pack_q4_0(data: &[u8], rows: usize, blocks: usize) -> Vec<Q4_0x8> {
    let mut out = Vec::with_capacity(rows.div_ceil(ROWS) * blocks);
    for group in rows_of(data, rows, blocks, 18) {
        for b in 0..blocks {
            let mut packed = Q4_0x8 {
                d: [f16::ZERO; ROWS],
                qs: [[0x88; 32]; 4],
            };
            for (r, row) in group.iter().enumerate() {
                let Some(row) = row else { continue };
                let block = &row[b * 18..(b + 1) * 18];
                packed.d[r] = f16_at(block, 0);
                let u = nibbles(&block[2..]);
                for c in 0..4 {
                    for t in 0..4 {
                        packed.qs[c][4 * r + t] = u[8 * c + t] | (u[8 * c + 4 + t] << 4);
                    }
                }
            }
            out.push(packed);
        }
    }
    out
}

/// Repacks Q8_0 rows (34-byte blocks: f16 scale, 32 signed bytes).
pub(crate) fn pack_q8_0(data: &[u8], rows: usize, blocks: usize) -> Vec<Q8_0x8> {
    let mut out = Vec::with_capacity(rows.div_ceil(ROWS) * blocks);
    for group in rows_of(data, rows, blocks, 34) {
        for b in 0..blocks {
            let mut packed = Q8_0x8 {
                d: [f16::ZERO; ROWS],
                qs: [[0; 32]; ROWS],
            };
            for (r, row) in group.iter().enumerate() {
                let Some(row) = row else { continue };
                let block = &row[b * 34..(b + 1) * 34];
                packed.d[r] = f16_at(block, 0);
                for (q, &byte) in packed.qs[r].iter_mut().zip(&block[2..]) {
                    *q = byte as i8;
                }
            }
            out.push(packed);
        }
    }
    out
}

/// Repacks Q4_1 rows (20-byte blocks: f16 scale, f16 minimum, 16 bytes of nibbles).
pub(crate) fn pack_q4_1(data: &[u8], rows: usize, blocks: usize) -> Vec<Q4_1x8> {
    let mut out = Vec::with_capacity(rows.div_ceil(ROWS) * blocks);
    for group in rows_of(data, rows, blocks, 20) {
        for b in 0..blocks {
            let mut packed = Q4_1x8 {
                d: [f16::ZERO; ROWS],
                m: [f16::ZERO; ROWS],
                qs: [[0; 32]; 4],
            };
            for (r, row) in group.iter().enumerate() {
                let Some(row) = row else { continue };
                let block = &row[b * 20..(b + 1) * 20];
                packed.d[r] = f16_at(block, 0);
                packed.m[r] = f16_at(block, 2);
                let shift = 4 * (r % 2);
                for (byte, u) in packed.qs[r / 2].iter_mut().zip(nibbles(&block[4..])) {
                    *byte |= u << shift;
                }
            }
            out.push(packed);
        }
    }
    out
}

impl Q4_0x8 {
    /// Row `r`'s 32 weights as f32.
    pub(crate) fn dequantize(&self, r: usize, out: &mut [f32]) {
        let d = self.d[r].to_f32();
        for (j, o) in out.iter_mut().enumerate() {
            let (c, t, high) = (j / 8, j % 4, j % 8 >= 4);
            let byte = self.qs[c][4 * r + t];
            let u = if high { byte >> 4 } else { byte & 0x0F };
            *o = (i32::from(u) - 8) as f32 * d;
        }
    }
}

impl Q8_0x8 {
    /// Row `r`'s 32 weights as f32.
    pub(crate) fn dequantize(&self, r: usize, out: &mut [f32]) {
        let d = self.d[r].to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs[r]) {
            *o = f32::from(q) * d;
        }
    }
}

impl Q4_1x8 {
    /// Row `r`'s 32 weights as f32.
    pub(crate) fn dequantize(&self, r: usize, out: &mut [f32]) {
        let (d, m) = (self.d[r].to_f32(), self.m[r].to_f32());
        let shift = 4 * (r % 2);
        for (o, &byte) in out.iter_mut().zip(&self.qs[r / 2]) {
            *o = f32::from((byte >> shift) & 0x0F) * d + m;
        }
    }
}
