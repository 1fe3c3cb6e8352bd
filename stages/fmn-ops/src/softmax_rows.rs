//! Row softmax for the fused attention, with an f32 `exp` the compiler vectorises.
//!
//! With libm's scalar `expf` the exponentials were most of the attention's non-product time at
//! 4,096 tokens (134 M per layer forward, as many again in the backward's recomputation;
//! BENCHMARKS.md#faster-than-pytorch-side-by-side). Here f32 rows are computed 16 lanes at a
//! time by [`crate::vmath::exp`], compiled for AVX2 + FMA where the CPU has them; f64 rows (the
//! finite-difference tests) keep libm's `exp`.
use crate::vmath::exp;
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
