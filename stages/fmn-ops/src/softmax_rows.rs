//! Row softmax for the fused attention, with an f32 `exp` the compiler vectorises.
//!
//! With libm's scalar `expf` the exponentials were most of the attention's non-product time at
//! 4,096 tokens (134 M per layer forward, as many again in the backward's recomputation;
//! BENCHMARKS.md#faster-matrix-products-openblas-at-run-time). Here f32 rows are computed
//! 16 lanes at a time by a polynomial `exp` (Cephes' `expf`: relative error below 2·10⁻⁷,
//! the same as libm's to a few ulp), compiled for AVX2 + FMA where the CPU has them; f64 rows
//! (the finite-difference tests) keep libm's `exp`.
use num_traits::Float;

const LANES: usize = 16;

/// Turns each row (`M` values) of `p` into its softmax, in place.
pub trait SoftmaxRows: Float {
    fn softmax_rows(p: &mut [Self], m: usize);
}

impl SoftmaxRows for f64 {
    fn softmax_rows(p: &mut [f64], m: usize) {
        for row in p.chunks_mut(m) {
            let max = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0.0;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = sum.recip();
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

impl SoftmaxRows for f32 {
    fn softmax_rows(p: &mut [f32], m: usize) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { softmax_rows_avx2(p, m) };
        }
        softmax_rows_f32(p, m)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(p: &mut [f32], m: usize) {
    softmax_rows_f32(p, m)
}

#[inline(always)]
fn softmax_rows_f32(p: &mut [f32], m: usize) {
    for row in p.chunks_mut(m) {
        let max = row_max(row);
        let sum = exp_minus_in_place(row, max);
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    lanes.iter().fold(tail, |a, &b| a.max(b))
}

/// `x ← exp(x − max)` over the row; returns the sum of the results.
#[inline(always)]
fn exp_minus_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    lanes.iter().fold(sum, |a, &b| a + b)
}

/// Cephes' `expf`: `x = n·ln 2 + r` with |r| ≤ ln 2 / 2, `e^r` by its degree-7 polynomial, `2^n`
/// written into the exponent bits. 0 below the smallest normal result, as libm gives there
/// (to within 1.2·10⁻³⁸); inputs here are ≤ 0 (softmax after subtracting the row's maximum).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·C1 is exact (Cephes).
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.336_55;
    // e^88 is finite; above it 2^n would overflow the exponent.
    const HI: f32 = 88.0;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer in f32.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold n (two's complement): 2^n from them with wrapping integer ops
    // (a float-to-int cast saturates, and checked adds panic in debug builds: either keeps the
    // loop from being vectorised).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < LO {
        0.0
    } else {
        e * scale
    }
}
