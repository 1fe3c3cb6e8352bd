//! GroupNorm as one op with its own backward pass.
//!
//! Composed of candle primitives, GroupNorm costs about twenty full-size temporaries per
//! training step (broadcast subtractions, squares, divisions, and their gradients): `perf` put
//! most of the toy VAE step in such element-wise and broadcast chains (GroupNorm, SiLU), only
//! about 16 % in matrix products — though this op alone took that step only from 8.2 to 7.5 s
//! (BENCHMARKS.md#custom-cpu-ops-what-each-bought). It reads the input twice forward and three
//! times backward.
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    channels: usize,
    groups: usize,
    /// Elements per channel (H·W).
    spatial: usize,
    eps: f64,
}

impl Dims {
    fn per_group(&self) -> usize {
        self.channels / self.groups * self.spatial
    }
}

fn slice<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    crate::cpu_op::contiguous_slice(data, layout, "group_norm", what)
}

/// Mean and 1/σ of one group's values.
fn stats<T: WithDType>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let var = xs.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

fn forward<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(m).enumerate().for_each(|(bg, dst)| {
        let src = &x[bg * m..(bg + 1) * m];
        let (mean, inv) = stats(src, d.eps);
        let g = bg % d.groups;
        for (i, (o, v)) in dst.iter_mut().zip(src).enumerate() {
            let c = g * cpg + i / d.spatial;
            let xhat = (v.to_f64() - mean) * inv;
            *o = T::from_f64(xhat * gamma[c].to_f64() + beta[c].to_f64());
        }
    });
    out
}

/// `dx` for the whole input.
fn backward_x<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], dy: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(m).enumerate().for_each(|(bg, dst)| {
        let src = &x[bg * m..(bg + 1) * m];
        let gy = &dy[bg * m..(bg + 1) * m];
        let (mean, inv) = stats(src, d.eps);
        let g = bg % d.groups;
        let (mut mean_dxhat, mut mean_dxhat_xhat) = (0.0, 0.0);
        for (i, (v, gyv)) in src.iter().zip(gy).enumerate() {
            let c = g * cpg + i / d.spatial;
            let dxhat = gyv.to_f64() * gamma[c].to_f64();
            mean_dxhat += dxhat;
            mean_dxhat_xhat += dxhat * (v.to_f64() - mean) * inv;
        }
        mean_dxhat /= m as f64;
        mean_dxhat_xhat /= m as f64;
        for (i, ((o, v), gyv)) in dst.iter_mut().zip(src).zip(gy).enumerate() {
            let c = g * cpg + i / d.spatial;
            let xhat = (v.to_f64() - mean) * inv;
            let dxhat = gyv.to_f64() * gamma[c].to_f64();
            *o = T::from_f64(inv * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
        }
    });
    out
}

/// `[dγ; dβ]` as `[2, C]`.
fn backward_affine<T: WithDType>(x: &[T], dy: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let mut acc = vec![0f64; 2 * d.channels];
    for bg in 0..d.batch * d.groups {
        let src = &x[bg * m..(bg + 1) * m];
        let gy = &dy[bg * m..(bg + 1) * m];
        let (mean, inv) = stats(src, d.eps);
        let g = bg % d.groups;
        for (i, (v, gyv)) in src.iter().zip(gy).enumerate() {
            let c = g * cpg + i / d.spatial;
            acc[c] += gyv.to_f64() * (v.to_f64() - mean) * inv;
            acc[d.channels + c] += gyv.to_f64();
        }
    }
    acc.into_iter().map(T::from_f64).collect()
}

/// Which computation a [`GroupNormOp`] performs on its three inputs.
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// (x, γ, β) -> y
    Forward,
    /// (x, γ, dy) -> dx
    GradX,
    /// (x, dy, γ unused) -> [dγ; dβ] as `[2, C]`
    GradAffine,
}

struct GroupNormOp(Dims, Pass);

macro_rules! dispatch {
    ($name:literal, $s1:expr, $s2:expr, $s3:expr, |$a:ident, $b:ident, $c:ident| $body:expr) => {
        match ($s1, $s2, $s3) {
            ((CpuStorage::F32($a), l1), (CpuStorage::F32($b), l2), (CpuStorage::F32($c), l3)) => {
                let ($a, $b, $c) = (
                    slice($a, l1, "x")?,
                    slice($b, l2, "weight")?,
                    slice($c, l3, "third input")?,
                );
                CpuStorage::F32($body)
            }
            ((CpuStorage::F64($a), l1), (CpuStorage::F64($b), l2), (CpuStorage::F64($c), l3)) => {
                let ($a, $b, $c) = (
                    slice($a, l1, "x")?,
                    slice($b, l2, "weight")?,
                    slice($c, l3, "third input")?,
                );
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!(concat!($name, ": f32 or f64 inputs of one dtype expected")),
        }
    };
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        match self.1 {
            Pass::Forward => "fmn-group-norm",
            Pass::GradX => "fmn-group-norm-grad-x",
            Pass::GradAffine => "fmn-group-norm-grad-affine",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let GroupNormOp(d, pass) = *self;
        let out = dispatch!(
            "group_norm",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |a, b, c| match pass {
                Pass::Forward => forward(a, b, c, d),
                Pass::GradX => backward_x(a, b, c, d),
                Pass::GradAffine => backward_affine(a, b, d),
            }
        );
        let shape = match pass {
            Pass::GradAffine => Shape::from((2, d.channels)),
            _ => l1.shape().clone(),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.1, Pass::Forward) {
            candle_core::bail!("group_norm: second derivatives are not implemented");
        }
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(gamma, &grad, &GroupNormOp(self.0, Pass::GradX))?;
        let affine = x.apply_op3_no_bwd(&grad, gamma, &GroupNormOp(self.0, Pass::GradAffine))?;
        Ok((Some(dx), Some(affine.get(0)?), Some(affine.get(1)?)))
    }
}

/// `torch.nn.functional.group_norm(x, groups, weight, bias, eps)` for `x: [B, C, ...]`
/// (f32/f64 on the CPU; elsewhere, and for half precision, candle's composed GroupNorm).
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 3 {
        candle_core::bail!(
            "group_norm: input of rank {} (expected [B, C, ...])",
            dims.len()
        );
    }
    let d = Dims {
        batch: dims[0],
        channels: dims[1],
        groups,
        spatial: dims[2..].iter().product(),
        eps,
    };
    if groups == 0 || !d.channels.is_multiple_of(groups) {
        candle_core::bail!(
            "group_norm: {} channels cannot form {groups} groups",
            d.channels
        );
    }
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !fused {
        return candle_nn::GroupNorm::new(weight.clone(), bias.clone(), d.channels, groups, eps)
            .and_then(|gn| candle_core::Module::forward(&gn, x));
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        GroupNormOp(d, Pass::Forward),
    )
}
