//! Weight formats and the kernels over them.
//!
//! Weights stay in the file's formats: Q4_1 (per 32 weights an f16 scale `d` and minimum `m`
//! and 16 bytes of nibbles: weight `j` = `d·(qs[j] & 15) + m`, weight `j + 16` =
//! `d·(qs[j] >> 4) + m`) and Q8_0 (an f16 scale and 32 signed bytes). A matrix row is
//! expanded to f32 when it is used and multiplied with f32 activations: activations are not
//! quantised (as llama.cpp quantises them to 8 bits), because 8-bit activations move the
//! logits by a tenth or two, enough to flip the many near ties of greedy decoding against an
//! exact reference. AVX2 and FMA kernels are chosen once at run time when the CPU has them;
//! the scalar kernels are the reference they are tested against.

use half::f16;
use std::sync::OnceLock;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes of a Q4_1 block.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_0 block.
pub const Q8_0_BYTES: usize = 34;

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Expand one Q8_0 row into `out`.
pub fn dequantize_q8_0_scalar(row: &[u8], out: &mut [f32]) {
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

/// Expand one Q4_1 row into `out`.
pub fn dequantize_q4_1_scalar(row: &[u8], out: &mut [f32]) {
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

/// `a · b`, in f32.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    // 4 × 8 partial sums (chunk i of 8 into sum i % 4), as the SIMD kernel keeps.
    let mut acc = [0f32; 32];
    for (i, (ca, cb)) in a.chunks_exact(8).zip(b.chunks_exact(8)).enumerate() {
        for k in 0..8 {
            let at = (i % 4) * 8 + k;
            acc[at] = ca[k].mul_add(cb[k], acc[at]);
        }
    }
    let tail: f32 = a[a.len() / 8 * 8..]
        .iter()
        .zip(&b[b.len() / 8 * 8..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The kernels this CPU runs.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Expand a Q4_1 row.
    pub dequantize_q4_1: fn(&[u8], &mut [f32]),
    /// Expand a Q8_0 row.
    pub dequantize_q8_0: fn(&[u8], &mut [f32]),
    /// A dot product of two f32 rows.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// A Q4_1 row · f32 activations, without expanding the row first (equal to expanding
    /// then `dot`).
    pub dot_q4_1: fn(&[u8], &[f32]) -> f32,
    /// A Q8_0 row · f32 activations, likewise.
    pub dot_q8_0: fn(&[u8], &[f32]) -> f32,
    /// Which they are (`avx2` or `scalar`).
    pub name: &'static str,
}

/// The scalar kernels (the reference).
pub const SCALAR: Kernels = Kernels {
    dequantize_q4_1: dequantize_q4_1_scalar,
    dequantize_q8_0: dequantize_q8_0_scalar,
    dot: dot_scalar,
    dot_q4_1: |row, x| {
        let mut w = vec![0f32; x.len()];
        dequantize_q4_1_scalar(row, &mut w);
        dot_scalar(&w, x)
    },
    dot_q8_0: |row, x| {
        let mut w = vec![0f32; x.len()];
        dequantize_q8_0_scalar(row, &mut w);
        dot_scalar(&w, x)
    },
    name: "scalar",
};

/// The fastest kernels this CPU supports (looked up once).
pub fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Kernels {
                dequantize_q4_1: avx2::dequantize_q4_1,
                dequantize_q8_0: avx2::dequantize_q8_0,
                dot: avx2::dot,
                dot_q4_1: avx2::dot_q4_1,
                dot_q8_0: avx2::dot_q8_0,
                name: "avx2",
            };
        }
        SCALAR
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2, FMA and F16C kernels. Only reached through [`super::kernels`], which checks
    //! the CPU first. Sums run in four 8-lane accumulators (chunk `i` of 8 values into
    //! accumulator `i % 4`), so a fused row · activations equals expanding then `dot`.

    use super::{BLOCK, Q4_1_BYTES, Q8_0_BYTES};
    use std::arch::x86_64::*;

    pub fn dequantize_q4_1(row: &[u8], out: &mut [f32]) {
        let blocks = row.len() / Q4_1_BYTES;
        assert!(out.len() >= blocks * BLOCK);
        // SAFETY: `kernels` hands this out only when the CPU has AVX2, FMA and F16C; every
        // load is within `row` and every store within `out` (checked above).
        unsafe { expand(row.as_ptr(), Q4_1_BYTES, blocks, out.as_mut_ptr(), true) }
    }

    pub fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
        let blocks = row.len() / Q8_0_BYTES;
        assert!(out.len() >= blocks * BLOCK);
        // SAFETY: as above.
        unsafe { expand(row.as_ptr(), Q8_0_BYTES, blocks, out.as_mut_ptr(), false) }
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: as above; loads stay below `n`.
        let head = unsafe { dot_f32(a.as_ptr(), b.as_ptr(), n / 8) };
        head + a[n / 8 * 8..n]
            .iter()
            .zip(&b[n / 8 * 8..n])
            .map(|(x, y)| x * y)
            .sum::<f32>()
    }

    pub fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
        let blocks = row.len() / Q4_1_BYTES;
        assert!(x.len() >= blocks * BLOCK);
        // SAFETY: as above.
        unsafe { dot_blocks(row.as_ptr(), Q4_1_BYTES, blocks, x.as_ptr(), true) }
    }

    pub fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
        let blocks = row.len() / Q8_0_BYTES;
        assert!(x.len() >= blocks * BLOCK);
        // SAFETY: as above.
        unsafe { dot_blocks(row.as_ptr(), Q8_0_BYTES, blocks, x.as_ptr(), false) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn expand(row: *const u8, bytes: usize, blocks: usize, out: *mut f32, q4: bool) {
        for b in 0..blocks {
            // SAFETY: the caller bounds `blocks` by the row and the output.
            unsafe {
                let p = row.add(b * bytes);
                let w = if q4 { q4_1_block(p) } else { q8_0_block(p) };
                for (k, v) in w.into_iter().enumerate() {
                    _mm256_storeu_ps(out.add(b * BLOCK + 8 * k), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32(a: *const f32, b: *const f32, chunks: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..chunks {
            // SAFETY: the caller bounds `chunks` by both lengths.
            let (x, y) = unsafe { (_mm256_loadu_ps(a.add(8 * i)), _mm256_loadu_ps(b.add(8 * i))) };
            acc[i % 4] = _mm256_fmadd_ps(x, y, acc[i % 4]);
        }
        // SAFETY: the features are enabled here.
        unsafe { reduce(acc) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks(
        row: *const u8,
        bytes: usize,
        blocks: usize,
        x: *const f32,
        q4: bool,
    ) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..blocks {
            // SAFETY: the caller bounds `blocks` by the row and the activations.
            unsafe {
                let p = row.add(b * bytes);
                let w = if q4 { q4_1_block(p) } else { q8_0_block(p) };
                for k in 0..4 {
                    let v = _mm256_loadu_ps(x.add(b * BLOCK + 8 * k));
                    acc[k] = _mm256_fmadd_ps(w[k], v, acc[k]);
                }
            }
        }
        // SAFETY: the features are enabled here.
        unsafe { reduce(acc) }
    }

    /// The sum of four accumulators, lane by lane as the scalar kernel adds them.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn reduce(acc: [__m256; 4]) -> f32 {
        let mut lanes = [0f32; 32];
        for (k, v) in acc.into_iter().enumerate() {
            // SAFETY: eight floats at 8k.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * k), v) };
        }
        lanes.iter().sum()
    }

    /// An f16 at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half(p: *const u8) -> f32 {
        // SAFETY: the caller points at two readable bytes.
        let bits = unsafe { u16::from_le_bytes([*p, *p.add(1)]) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// The 32 weights of the Q4_1 block at `p`, in four vectors of eight.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_block(p: *const u8) -> [__m256; 4] {
        // SAFETY: the caller points at a whole block (20 bytes).
        unsafe {
            let d = _mm256_set1_ps(half(p));
            let m = _mm256_set1_ps(half(p.add(2)));
            let packed = _mm_loadu_si128(p.add(4) as *const __m128i);
            let low = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
            [
                nibbles(d, m, lo),
                nibbles(d, m, _mm_srli_si128(lo, 8)),
                nibbles(d, m, hi),
                nibbles(d, m, _mm_srli_si128(hi, 8)),
            ]
        }
    }

    /// `d · q + m` for the eight low bytes of `q` (nibbles).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(d: __m256, m: __m256, q: __m128i) -> __m256 {
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), m)
    }

    /// `d · q` for the eight signed bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn signed(d: __m256, p: *const u8) -> __m256 {
        // SAFETY: the caller points at eight readable bytes.
        let bytes = unsafe { _mm_loadl_epi64(p as *const __m128i) };
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)))
    }

    /// The 32 weights of the Q8_0 block at `p`, in four vectors of eight.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block(p: *const u8) -> [__m256; 4] {
        // SAFETY: the caller points at a whole block (34 bytes).
        unsafe {
            let d = _mm256_set1_ps(half(p));
            [
                signed(d, p.add(2)),
                signed(d, p.add(10)),
                signed(d, p.add(18)),
                signed(d, p.add(26)),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (SplitMix64).
    fn noise(seed: u64, n: usize) -> Vec<u8> {
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

    #[test]
    fn simd_kernels_equal_the_scalar_ones() {
        let k = kernels();
        let blocks = 48; // a row of 1,536, as SmolLM2's MLP
        for seed in 0..20 {
            for (bytes, fast, slow) in [
                (Q4_1_BYTES, k.dequantize_q4_1, SCALAR.dequantize_q4_1),
                (Q8_0_BYTES, k.dequantize_q8_0, SCALAR.dequantize_q8_0),
            ] {
                let row = weights(seed, blocks, bytes);
                let (mut a, mut b) = (vec![0f32; blocks * BLOCK], vec![0f32; blocks * BLOCK]);
                fast(&row, &mut a);
                slow(&row, &mut b);
                assert_eq!(a, b, "{} dequantisation", k.name);
            }
            let x: Vec<f32> = noise(seed + 100, 1539)
                .iter()
                .map(|&b| (f32::from(b) - 127.5) / 50.0)
                .collect();
            let y: Vec<f32> = noise(seed + 200, 1539)
                .iter()
                .map(|&b| (f32::from(b) - 127.5) / 70.0)
                .collect();
            let exact: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            for dot in [k.dot, SCALAR.dot] {
                let got = f64::from(dot(&x, &y));
                assert!((got - exact).abs() < 1e-3, "{got} vs {exact}");
            }
            // Fused row · activations equals expanding the row, then `dot`, bit for bit.
            let x = &x[..blocks * BLOCK];
            for (bytes, fused, expand) in [
                (Q4_1_BYTES, k.dot_q4_1, k.dequantize_q4_1),
                (Q8_0_BYTES, k.dot_q8_0, k.dequantize_q8_0),
            ] {
                let row = weights(seed, blocks, bytes);
                let mut w = vec![0f32; blocks * BLOCK];
                expand(&row, &mut w);
                assert_eq!(fused(&row, x), (k.dot)(&w, x), "{} fused", k.name);
            }
        }
    }

    #[test]
    fn q4_1_nibbles_are_laid_out_as_ggml_does() {
        // d = 1, m = -8: weight j is its nibble minus 8.
        let mut block = [0u8; Q4_1_BYTES];
        block[..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
        block[2..4].copy_from_slice(&f16::from_f32(-8.0).to_bits().to_le_bytes());
        for j in 0..16 {
            block[4 + j] = (j as u8) | ((15 - j as u8) << 4);
        }
        let mut out = [0f32; BLOCK];
        (kernels().dequantize_q4_1)(&block, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 - 8.0);
            assert_eq!(out[j + 16], 7.0 - j as f32);
        }
    }
}
