//! f32 `exp` and `erf` written so that loops over them vectorise (no calls, no branches, no
//! checked integer arithmetic): libm's scalar `expf` / `erff` were most of the non-product
//! time of the attention softmax and the GEGLU at SD sizes
//! (BENCHMARKS.md#faster-than-pytorch-side-by-side).

/// Cephes' `expf`: `x = n·ln 2 + r` with |r| ≤ ln 2 / 2, `e^r` by its degree-7 polynomial, `2^n`
/// written into the exponent bits (relative error below 2.5·10⁻⁷). 0 below the smallest normal
/// result, as libm gives there (to within 1.2·10⁻³⁸); inputs above 88 are taken as 88 (the
/// callers' are ≤ 0).
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

/// `erf` by Abramowitz & Stegun 7.1.26 (absolute error below 1.5·10⁻⁷; the form PyTorch's
/// vectorised CPU `erf` uses): `1 − t·P(t)·e^(−x²)` with `t = 1 / (1 + p|x|)`, odd in x.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let r = 1.0 - poly * exp(-a * a);
    r.copysign(x)
}
