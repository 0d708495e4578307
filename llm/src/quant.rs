//! Block formats and their dot products.
//!
//! Weights stay in the file's formats: Q4_1 (per 32 weights an f16 scale `d` and minimum `m`
//! and 16 bytes of nibbles, weight `j` = `d·(qs[j] & 15) + m` and weight `j + 16` =
//! `d·(qs[j] >> 4) + m`) and Q8_0 (an f16 scale and 32 signed bytes). Activations are
//! quantised per 32 values to signed bytes with an f32 scale and, for Q4_1, the scaled sum
//! the minimum multiplies ([`Q8Block`]). A dot product of a weight row with an activation
//! row then runs on integers, with AVX2 (and FMA) when the CPU has them, chosen once at run
//! time; the scalar kernels are the reference the SIMD ones are tested against.

use half::f16;
use std::sync::OnceLock;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes of a Q4_1 block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_0 block.
pub const Q8_0_BYTES: usize = 34;

/// 32 activations quantised to signed bytes: value `i` ≈ `d · qs[i]`; `s` = `d · Σ qs`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Q8Block {
    /// The bytes.
    pub qs: [i8; BLOCK],
    /// The scale.
    pub d: f32,
    /// The scale times the sum of the bytes.
    pub s: f32,
}

/// Quantise `x` (a whole number of blocks) into `out`.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    debug_assert_eq!(x.len(), out.len() * BLOCK);
    for (chunk, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in block.qs.iter_mut().zip(chunk) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        block.d = d;
        block.s = d * sum as f32;
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Dequantise one Q8_0 row into `out`.
pub fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
    for (block, values) in row
        .chunks_exact(Q8_0_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16_at(block, 0);
        for (v, &q) in values.iter_mut().zip(&block[2..]) {
            *v = d * f32::from(q as i8);
        }
    }
}

/// Dequantise one Q4_1 row into `out`.
pub fn dequantize_q4_1(row: &[u8], out: &mut [f32]) {
    for (block, values) in row
        .chunks_exact(Q4_1_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        for j in 0..16 {
            values[j] = d * f32::from(block[4 + j] & 0x0F) + m;
            values[j + 16] = d * f32::from(block[4 + j] >> 4) + m;
        }
    }
}

/// Scalar Q4_1 · Q8 dot product of one row.
pub fn dot_q4_1_scalar(row: &[u8], x: &[Q8Block]) -> f32 {
    row.chunks_exact(Q4_1_BYTES)
        .zip(x)
        .map(|(block, y)| {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            let mut sum = 0i32;
            for j in 0..16 {
                sum += i32::from(block[4 + j] & 0x0F) * i32::from(y.qs[j]);
                sum += i32::from(block[4 + j] >> 4) * i32::from(y.qs[j + 16]);
            }
            d * y.d * sum as f32 + m * y.s
        })
        .sum()
}

/// Scalar Q8_0 · Q8 dot product of one row.
pub fn dot_q8_0_scalar(row: &[u8], x: &[Q8Block]) -> f32 {
    row.chunks_exact(Q8_0_BYTES)
        .zip(x)
        .map(|(block, y)| {
            let d = f16_at(block, 0);
            let sum: i32 = block[2..]
                .iter()
                .zip(&y.qs)
                .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                .sum();
            d * y.d * sum as f32
        })
        .sum()
}

/// The dot-product kernels this CPU runs.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Q4_1 row · activations.
    pub q4_1: fn(&[u8], &[Q8Block]) -> f32,
    /// Q8_0 row · activations.
    pub q8_0: fn(&[u8], &[Q8Block]) -> f32,
    /// Which they are (`avx2` or `scalar`).
    pub name: &'static str,
}

/// The fastest kernels this CPU supports (looked up once).
pub fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernels {
                q4_1: avx2::dot_q4_1,
                q8_0: avx2::dot_q8_0,
                name: "avx2",
            };
        }
        Kernels {
            q4_1: dot_q4_1_scalar,
            q8_0: dot_q8_0_scalar,
            name: "scalar",
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 kernels, after ggml's `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q8_0_q8_0`.
    //! Only reached through [`super::kernels`], which checks the CPU first.

    use super::{Q4_1_BYTES, Q8_0_BYTES, Q8Block, f16_at};
    use std::arch::x86_64::*;

    pub fn dot_q4_1(row: &[u8], x: &[Q8Block]) -> f32 {
        assert!(row.len() >= x.len() * Q4_1_BYTES);
        // SAFETY: `kernels` hands this out only when the CPU has AVX2 and FMA; every load
        // is within `row` (checked above) or within a `Q8Block`.
        unsafe { q4_1(row, x) }
    }

    pub fn dot_q8_0(row: &[u8], x: &[Q8Block]) -> f32 {
        assert!(row.len() >= x.len() * Q8_0_BYTES);
        // SAFETY: as above.
        unsafe { q8_0(row, x) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4_1(row: &[u8], x: &[Q8Block]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (i, y) in x.iter().enumerate() {
            let block = &row[i * Q4_1_BYTES..(i + 1) * Q4_1_BYTES];
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            // SAFETY: 16 bytes at 4..20 of the block; 32 bytes of `y.qs`.
            let (packed, ys) = unsafe {
                (
                    _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i),
                    _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i),
                )
            };
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            let xs = _mm256_set_m128i(hi, lo);
            let pairs = _mm256_maddubs_epi16(xs, ys);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), sums, acc);
            mins += m * y.s;
        }
        // SAFETY: AVX2 is enabled in this function.
        unsafe { hsum(acc) + mins }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8_0(row: &[u8], x: &[Q8Block]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for (i, y) in x.iter().enumerate() {
            let block = &row[i * Q8_0_BYTES..(i + 1) * Q8_0_BYTES];
            let d = f16_at(block, 0);
            // SAFETY: 32 bytes at 2..34 of the block; 32 bytes of `y.qs`.
            let (ws, ys) = unsafe {
                (
                    _mm256_loadu_si256(block.as_ptr().add(2) as *const __m256i),
                    _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i),
                )
            };
            // |w| · (y with w's sign): unsigned × signed, as maddubs wants.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(ys, ws));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), sums, acc);
        }
        // SAFETY: AVX2 is enabled in this function.
        unsafe { hsum(acc) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (SplitMix64).
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    /// Blocks with sane f16 scales (random bits would give NaN and infinity).
    fn weights(seed: u64, blocks: usize, bytes: usize) -> Vec<u8> {
        let mut row = noise(seed, blocks * bytes);
        for (i, block) in row.chunks_exact_mut(bytes).enumerate() {
            let scale = f16::from_f32(0.01 + (i % 7) as f32 * 0.003)
                .to_bits()
                .to_le_bytes();
            block[..2].copy_from_slice(&scale);
            if bytes == Q4_1_BYTES {
                let min = f16::from_f32(-0.05 * (i % 3) as f32)
                    .to_bits()
                    .to_le_bytes();
                block[2..4].copy_from_slice(&min);
            }
        }
        row
    }

    fn activations(seed: u64, n: usize) -> Vec<f32> {
        noise(seed, n)
            .into_iter()
            .map(|b| (f32::from(b) - 127.5) / 50.0)
            .collect()
    }

    #[test]
    fn kernels_agree_with_the_dequantised_dot_product() {
        let blocks = 18; // a row of 576, as in SmolLM2
        let x = activations(1, blocks * BLOCK);
        let mut q = vec![Q8Block::default(); blocks];
        quantize_row(&x, &mut q);
        let k = kernels();
        for (bytes, fast, slow, dequantize) in [
            (
                Q4_1_BYTES,
                k.q4_1,
                dot_q4_1_scalar as fn(&[u8], &[Q8Block]) -> f32,
                dequantize_q4_1 as fn(&[u8], &mut [f32]),
            ),
            (Q8_0_BYTES, k.q8_0, dot_q8_0_scalar, dequantize_q8_0),
        ] {
            for seed in 0..20 {
                let row = weights(seed, blocks, bytes);
                let mut w = vec![0f32; blocks * BLOCK];
                dequantize(&row, &mut w);
                let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
                let (f, s) = (fast(&row, &q), slow(&row, &q));
                // The SIMD and scalar kernels add in different orders: equal to rounding.
                assert!(
                    (f - s).abs() <= 1e-4 * s.abs().max(1.0),
                    "{} {f} vs {s}",
                    k.name
                );
                // Quantising the activations costs little against the float dot product.
                let scale = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>();
                assert!((s - exact).abs() <= 0.01 * scale, "{s} vs {exact}");
            }
        }
    }

    #[test]
    fn quantising_keeps_values_and_sums() {
        let x = activations(3, 64);
        let mut q = vec![Q8Block::default(); 2];
        quantize_row(&x, &mut q);
        for (block, chunk) in q.iter().zip(x.chunks(BLOCK)) {
            for (&b, &v) in block.qs.iter().zip(chunk) {
                assert!((f32::from(b) * block.d - v).abs() <= block.d / 2.0 + 1e-6);
            }
            let sum: i32 = block.qs.iter().map(|&b| i32::from(b)).sum();
            assert_eq!(block.s, block.d * sum as f32);
        }
        let mut zeros = vec![Q8Block::default(); 1];
        quantize_row(&[0.0; 32], &mut zeros);
        assert_eq!((zeros[0].d, zeros[0].s, zeros[0].qs), (0.0, 0.0, [0; 32]));
    }
}
