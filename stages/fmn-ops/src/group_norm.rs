//! GroupNorm as one op with its own backward pass.
//!
//! Composed of candle primitives, GroupNorm costs about twenty full-size temporaries per
//! training step (broadcast subtractions, squares, divisions, and their gradients): `perf` put
//! most of the toy VAE step in such element-wise and broadcast chains (GroupNorm, SiLU), only
//! about 16 % in matrix products — though this op alone took that step only from 8.2 to 7.5 s
//! (BENCHMARKS.md#custom-cpu-ops-what-each-bought). It reads the input twice forward and three
//! times backward, per channel with the group's sums in independent lanes (one running sum per
//! group and an integer division per element made it 13× PyTorch's time at SD 1.5's 512²
//! sizes; BENCHMARKS.md#faster-than-pytorch-side-by-side).
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

/// f64 accumulators per lane: a sum in one accumulator is a chain of dependent adds (latency
/// bound, and never vectorised); eight independent ones are not.
const LANES: usize = 8;

/// `Σ f(x_i)` (f64) over `xs` in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum<T: WithDType>(xs: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(v.to_f64());
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| f(v.to_f64())).sum();
    acc.iter().sum::<f64>() + tail
}

/// `(Σ dy, Σ dy·x)` (f64) over one channel's values, in [`LANES`] partial sums.
#[inline(always)]
fn grad_sums<T: WithDType>(x: &[T], dy: &[T]) -> (f64, f64) {
    let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
    let (mut xc, mut gc) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    for (xs, gs) in (&mut xc).zip(&mut gc) {
        for i in 0..LANES {
            let g = gs[i].to_f64();
            s1[i] += g;
            s2[i] += g * xs[i].to_f64();
        }
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    for (v, g) in xc.remainder().iter().zip(gc.remainder()) {
        t1 += g.to_f64();
        t2 += g.to_f64() * v.to_f64();
    }
    (s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2)
}

/// Groups per parallel task: LayerNorm's rows are groups of a few hundred values, too small to
/// be a task each (4,096 of them made the 4,096 × 320 forward 3× slower than the composed ops).
fn groups_per_task(per_group: usize) -> usize {
    (16_384 / per_group.max(1)).max(1)
}

/// Mean and 1/σ of one group's values (two passes, as torch).
fn stats<T: WithDType>(xs: &[T], eps: f64) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = lane_sum(xs, |v| v) / n;
    let var = lane_sum(xs, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `dst[i] = src[i]·a + b` over one channel.
#[inline(always)]
fn affine<T: WithDType>(dst: &mut [T], src: &[T], a: f64, b: f64) {
    for (o, v) in dst.iter_mut().zip(src) {
        *o = T::from_f64(v.to_f64() * a + b);
    }
}

fn forward<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(m)
        .with_min_len(groups_per_task(m))
        .enumerate()
        .for_each(|(bg, dst)| {
            let src = &x[bg * m..(bg + 1) * m];
            let (mean, inv) = stats(src, d.eps);
            let g = bg % d.groups;
            for (ci, (o, v)) in dst
                .chunks_mut(d.spatial)
                .zip(src.chunks(d.spatial))
                .enumerate()
            {
                let c = g * cpg + ci;
                let a = gamma[c].to_f64() * inv;
                affine(o, v, a, beta[c].to_f64() - mean * a);
            }
        });
    out
}

/// One group of one sample: per channel `(Σ dy, Σ dy·x)`, and the group's mean and 1/σ.
struct GroupSums {
    channels: Vec<(f64, f64)>,
    mean: f64,
    inv: f64,
}

fn group_grad_sums<T: WithDType>(x: &[T], dy: &[T], d: Dims) -> GroupSums {
    let (mean, inv) = stats(x, d.eps);
    let channels = x
        .chunks(d.spatial)
        .zip(dy.chunks(d.spatial))
        .map(|(xs, gs)| grad_sums(xs, gs))
        .collect();
    GroupSums {
        channels,
        mean,
        inv,
    }
}

/// `dx` for the whole input.
fn backward_x<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], dy: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(m)
        .with_min_len(groups_per_task(m))
        .enumerate()
        .for_each(|(bg, dst)| {
            let src = &x[bg * m..(bg + 1) * m];
            let gy = &dy[bg * m..(bg + 1) * m];
            let GroupSums {
                channels: sums,
                mean,
                inv,
            } = group_grad_sums(src, gy, d);
            let g = bg % d.groups;
            let gamma = &gamma[g * cpg..(g + 1) * cpg];
            // With dx̂ = γ dy: mean(dx̂) and mean(dx̂ · x̂) over the group, from the channel sums.
            let mean_dxhat = gamma
                .iter()
                .zip(&sums)
                .map(|(c, s)| c.to_f64() * s.0)
                .sum::<f64>()
                / m as f64;
            let mean_dxhat_xhat = inv
                * gamma
                    .iter()
                    .zip(&sums)
                    .map(|(c, s)| c.to_f64() * (s.1 - mean * s.0))
                    .sum::<f64>()
                / m as f64;
            // dx = inv (γ dy − mean(dx̂) − x̂ mean(dx̂ x̂)), linear in dy and x per channel.
            let kx = -inv * inv * mean_dxhat_xhat;
            let k0 = -inv * mean_dxhat + mean * inv * inv * mean_dxhat_xhat;
            for ((o, (v, gyv)), c) in dst
                .chunks_mut(d.spatial)
                .zip(src.chunks(d.spatial).zip(gy.chunks(d.spatial)))
                .zip(gamma)
            {
                let ky = inv * c.to_f64();
                for ((o, v), gyv) in o.iter_mut().zip(v).zip(gyv) {
                    *o = T::from_f64(gyv.to_f64() * ky + v.to_f64() * kx + k0);
                }
            }
        });
    out
}

/// `[dγ; dβ]` as `[2, C]`.
fn backward_affine<T: WithDType + Send + Sync>(x: &[T], dy: &[T], d: Dims) -> Vec<T> {
    let m = d.per_group();
    let cpg = d.channels / d.groups;
    let per_group: Vec<GroupSums> = (0..d.batch * d.groups)
        .into_par_iter()
        .with_min_len(groups_per_task(m))
        .map(|bg| group_grad_sums(&x[bg * m..(bg + 1) * m], &dy[bg * m..(bg + 1) * m], d))
        .collect();
    let mut acc = vec![0f64; 2 * d.channels];
    for (bg, sums) in per_group.iter().enumerate() {
        let (g, mean, inv) = (bg % d.groups, sums.mean, sums.inv);
        for (ci, (s1, s2)) in sums.channels.iter().enumerate() {
            let c = g * cpg + ci;
            acc[c] += inv * (s2 - mean * s1);
            acc[d.channels + c] += s1;
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
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.1, Pass::Forward) {
            candle_core::bail!("group_norm: second derivatives are not implemented");
        }
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(gamma, &grad, &GroupNormOp(self.0, Pass::GradX))?;
        // A frozen γ and β (an inversion's UNet) need no gradient: skip their pass.
        if !gamma.track_op() && !beta.track_op() {
            return Ok((Some(dx), None, None));
        }
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
