//! GEGLU (`h · gelu(g)` for `[h, g]` = the two halves of the last dimension, diffusers'
//! `GEGLU` after its projection) as one op with its own backward pass.
//!
//! Composed of candle ops it took 2.3–3× PyTorch's time at SD 1.5's first level (4,096 × 2,560
//! values), most of it in libm's scalar `erf` and in the chunk copies
//! (BENCHMARKS.md#faster-than-pytorch-side-by-side); the graph also held the GELU's output. Here
//! one pass over each row with a vectorised f32 `erf` ([`crate::vmath`]; f64 keeps libm's), and
//! the backward keeps only the op's input.
use crate::cpu_op::contiguous_slice;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `gelu(g)` and `gelu'(g)` per element, in the type's own arithmetic.
pub trait GeluMath: Copy + Send + Sync + Sized + 'static {
    /// `out[i] = h[i] · gelu(g[i])`
    fn forward_row(h: &[Self], g: &[Self], out: &mut [Self]);
    /// `dh[i] = dout[i] · gelu(g[i])`, `dg[i] = dout[i] · h[i] · gelu'(g[i])`
    fn backward_row(h: &[Self], g: &[Self], dout: &[Self], dh: &mut [Self], dg: &mut [Self]);
}

impl GeluMath for f64 {
    fn forward_row(h: &[f64], g: &[f64], out: &mut [f64]) {
        for ((o, &h), &g) in out.iter_mut().zip(h).zip(g) {
            *o = h * g * cdf_f64(g);
        }
    }
    fn backward_row(h: &[f64], g: &[f64], dout: &[f64], dh: &mut [f64], dg: &mut [f64]) {
        for i in 0..h.len() {
            let (phi, cdf) = ((-0.5 * g[i] * g[i]).exp() * FRAC_1_SQRT_2PI, cdf_f64(g[i]));
            dh[i] = dout[i] * g[i] * cdf;
            dg[i] = dout[i] * h[i] * (cdf + g[i] * phi);
        }
    }
}

fn cdf_f64(x: f64) -> f64 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2))
}

impl GeluMath for f32 {
    fn forward_row(h: &[f32], g: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { forward_row_avx2(h, g, out) };
        }
        forward_row_f32(h, g, out)
    }
    fn backward_row(h: &[f32], g: &[f32], dout: &[f32], dh: &mut [f32], dg: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { backward_row_avx2(h, g, dout, dh, dg) };
        }
        backward_row_f32(h, g, dout, dh, dg)
    }
}

#[inline(always)]
fn cdf_f32(x: f32) -> f32 {
    0.5 * (1.0 + crate::vmath::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn forward_row_f32(h: &[f32], g: &[f32], out: &mut [f32]) {
    for ((o, &h), &g) in out.iter_mut().zip(h).zip(g) {
        *o = h * g * cdf_f32(g);
    }
}

#[inline(always)]
fn backward_row_f32(h: &[f32], g: &[f32], dout: &[f32], dh: &mut [f32], dg: &mut [f32]) {
    let n = h
        .len()
        .min(g.len())
        .min(dout.len())
        .min(dh.len())
        .min(dg.len());
    let (h, g, dout, dh, dg) = (&h[..n], &g[..n], &dout[..n], &mut dh[..n], &mut dg[..n]);
    for i in 0..n {
        let x = g[i];
        let phi = crate::vmath::exp(-0.5 * x * x) * FRAC_1_SQRT_2PI as f32;
        let cdf = cdf_f32(x);
        dh[i] = dout[i] * x * cdf;
        dg[i] = dout[i] * h[i] * (cdf + x * phi);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_row_avx2(h: &[f32], g: &[f32], out: &mut [f32]) {
    forward_row_f32(h, g, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_row_avx2(h: &[f32], g: &[f32], dout: &[f32], dh: &mut [f32], dg: &mut [f32]) {
    backward_row_f32(h, g, dout, dh, dg)
}

/// `x: [.., 2·I] -> [.., I]`
struct Geglu;
/// `(x, dout) -> dx`
struct GegluGrad;

/// `I`, half the last dimension.
fn half(layout: &Layout) -> Result<usize> {
    let last = layout.shape().dims().last().copied().unwrap_or(0);
    if last % 2 != 0 || last == 0 {
        candle_core::bail!("geglu: the last dimension ({last}) must be even and non-zero");
    }
    Ok(last / 2)
}

fn forward<T: GeluMath + num_traits::Zero>(x: &[T], inner: usize) -> Vec<T> {
    let mut out = vec![T::zero(); x.len() / 2];
    out.par_chunks_mut(inner)
        .zip(x.par_chunks(2 * inner))
        .for_each(|(o, row)| T::forward_row(&row[..inner], &row[inner..], o));
    out
}

fn backward<T: GeluMath + num_traits::Zero>(x: &[T], dout: &[T], inner: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(2 * inner)
        .zip(x.par_chunks(2 * inner).zip(dout.par_chunks(inner)))
        .for_each(|(d, (row, go))| {
            let (dh, dg) = d.split_at_mut(inner);
            T::backward_row(&row[..inner], &row[inner..], go, dh, dg)
        });
    dx
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "fmn-geglu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let inner = half(l)?;
        let mut dims = l.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = inner;
        }
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(forward(contiguous_slice(v, l, "geglu", "x")?, inner))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(forward(contiguous_slice(v, l, "geglu", "x")?, inner))
            }
            _ => candle_core::bail!("geglu: f32 or f64 expected on the CPU"),
        };
        Ok((out, Shape::from(dims)))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GegluGrad)?))
    }
}

impl CustomOp2 for GegluGrad {
    fn name(&self) -> &'static str {
        "fmn-geglu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let inner = half(l1)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(backward(
                contiguous_slice(x, l1, "geglu", "x")?,
                contiguous_slice(g, l2, "geglu", "output gradient")?,
                inner,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(backward(
                contiguous_slice(x, l1, "geglu", "x")?,
                contiguous_slice(g, l2, "geglu", "output gradient")?,
                inner,
            )),
            _ => candle_core::bail!("geglu backward: f32 or f64 of one dtype expected"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// diffusers' GEGLU after its projection: `x: [.., 2·I] -> [.., I]`, `x[.., :I] · gelu(x[.., I:])`
/// with the exact (erf) GELU. One op on the CPU in f32/f64; elsewhere candle's ops.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
        return x.contiguous()?.apply_op1(Geglu);
    }
    let halves = x.chunk(2, candle_core::D::Minus1)?;
    halves[0].mul(&halves[1].gelu_erf()?)
}
