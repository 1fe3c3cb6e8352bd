//! Scaled dot-product attention as one CPU op with its own backward pass.
//!
//! Composed of candle ops, attention materialises the `[B·H, N, M]` scores and probabilities
//! several times over (matmul, max, exp, sum, div, and as many again backwards); at SD sizes
//! that is gigabytes per layer, and on the toy UNet a quarter of a training step. Here each
//! (batch, head) pair is computed row by row, recomputing the probabilities in the backward
//! pass instead of storing them (as FlashAttention does), so memory stays O(N·D).
//!
//! Used where the probabilities themselves are not needed; probes take the composed path.
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

struct Sdpa {
    scale: f64,
}

#[derive(Clone, Copy)]
struct Dims {
    bh: usize,
    n: usize,
    m: usize,
    d: usize,
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused attention: {what} must be contiguous"),
    }
}

#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |acc, (&x, &y)| acc + x * y)
}

/// Softmax row `p` (length M) of query `qi` against the keys `k` (`[M, D]`).
#[inline]
fn probabilities<T: Float>(qi: &[T], k: &[T], d: usize, scale: T, p: &mut [T]) {
    let mut max = T::neg_infinity();
    for (j, pj) in p.iter_mut().enumerate() {
        *pj = dot(qi, &k[j * d..(j + 1) * d]) * scale;
        max = max.max(*pj);
    }
    let mut sum = T::zero();
    for pj in p.iter_mut() {
        *pj = (*pj - max).exp();
        sum = sum + *pj;
    }
    let inv = sum.recip();
    for pj in p.iter_mut() {
        *pj = *pj * inv;
    }
}

fn forward<T: Float + Send + Sync>(q: &[T], k: &[T], v: &[T], s: Dims, scale: T) -> Vec<T> {
    let Dims { n, m, d, .. } = s;
    let mut out = vec![T::zero(); s.bh * n * d];
    out.par_chunks_mut(n * d).enumerate().for_each(|(b, o)| {
        let (q, k, v) = (
            &q[b * n * d..(b + 1) * n * d],
            &k[b * m * d..(b + 1) * m * d],
            &v[b * m * d..(b + 1) * m * d],
        );
        let mut p = vec![T::zero(); m];
        for i in 0..n {
            probabilities(&q[i * d..(i + 1) * d], k, d, scale, &mut p);
            let oi = &mut o[i * d..(i + 1) * d];
            for (j, &pj) in p.iter().enumerate() {
                for (o, &vj) in oi.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                    *o = *o + pj * vj;
                }
            }
        }
    });
    out
}

/// Gradients `(dq, dk, dv)` of attention with output `out` and output gradient `dout`.
fn backward<T: Float + Send + Sync>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    dout: &[T],
    s: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { n, m, d, .. } = s;
    let per_pair: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..s.bh)
        .into_par_iter()
        .map(|b| {
            let (q, k, v) = (
                &q[b * n * d..(b + 1) * n * d],
                &k[b * m * d..(b + 1) * m * d],
                &v[b * m * d..(b + 1) * m * d],
            );
            let (o, go) = (
                &out[b * n * d..(b + 1) * n * d],
                &dout[b * n * d..(b + 1) * n * d],
            );
            let (mut dq, mut dk, mut dv) = (
                vec![T::zero(); n * d],
                vec![T::zero(); m * d],
                vec![T::zero(); m * d],
            );
            let mut p = vec![T::zero(); m];
            for i in 0..n {
                let qi = &q[i * d..(i + 1) * d];
                let gi = &go[i * d..(i + 1) * d];
                probabilities(qi, k, d, scale, &mut p);
                // d(softmax): ds_j = p_j (dp_j - Σ_l p_l dp_l), and Σ_l p_l dp_l = dout_i · out_i.
                let row_dot = dot(gi, &o[i * d..(i + 1) * d]);
                let dqi = &mut dq[i * d..(i + 1) * d];
                for j in 0..m {
                    let vj = &v[j * d..(j + 1) * d];
                    let pj = p[j];
                    for (dv, &g) in dv[j * d..(j + 1) * d].iter_mut().zip(gi) {
                        *dv = *dv + pj * g;
                    }
                    let ds = pj * (dot(gi, vj) - row_dot) * scale;
                    let kj = &k[j * d..(j + 1) * d];
                    for (dq, &kk) in dqi.iter_mut().zip(kj) {
                        *dq = *dq + ds * kk;
                    }
                    for (dk, &qq) in dk[j * d..(j + 1) * d].iter_mut().zip(qi) {
                        *dk = *dk + ds * qq;
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = Vec::with_capacity(s.bh * n * d);
    let mut dk = Vec::with_capacity(s.bh * m * d);
    let mut dv = Vec::with_capacity(s.bh * m * d);
    for (a, b, c) in per_pair {
        dq.extend(a);
        dk.extend(b);
        dv.extend(c);
    }
    (dq, dk, dv)
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
    let (bh, n, d) = q.shape().dims3()?;
    let (bk, m, dk) = k.shape().dims3()?;
    if (bk, dk) != (bh, d) || v.shape().dims() != k.shape().dims() {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?}, v {:?} do not fit [BH, N, D], [BH, M, D], [BH, M, D]",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    Ok(Dims { bh, n, m, d })
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "fmn-sdpa"
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
        let s = dims(l1, l2, l3)?;
        let shape = Shape::from((s.bh, s.n, s.d));
        fn run<T: Float + WithDType + Send + Sync>(
            q: &[T],
            k: &[T],
            v: &[T],
            ls: [&Layout; 3],
            s: Dims,
            scale: f64,
        ) -> Result<Vec<T>> {
            let q = contiguous(q, ls[0], "q")?;
            let k = contiguous(k, ls[1], "k")?;
            let v = contiguous(v, ls[2], "v")?;
            Ok(forward(q, k, v, s, T::from(scale).unwrap_or_else(T::one)))
        }
        let ls = [l1, l2, l3];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(run(q, k, v, ls, s, self.scale)?)
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(run(q, k, v, ls, s, self.scale)?)
            }
            _ => candle_core::bail!("fused attention: q, k, v must all be f32 or all f64"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (bh, n, d) = q.dims3()?;
        let m = k.dim(1)?;
        let s = Dims { bh, n, m, d };
        let dev = q.device();
        macro_rules! grads {
            ($t:ty) => {{
                let get = |x: &Tensor| -> Result<Vec<$t>> { x.flatten_all()?.to_vec1::<$t>() };
                let (dq, dk, dv) = backward(
                    &get(q)?,
                    &get(k)?,
                    &get(v)?,
                    &get(out)?,
                    &get(dout)?,
                    s,
                    self.scale as $t,
                );
                (
                    Tensor::from_vec(dq, (bh, n, d), dev)?,
                    Tensor::from_vec(dk, (bh, m, d), dev)?,
                    Tensor::from_vec(dv, (bh, m, d), dev)?,
                )
            }};
        }
        let (dq, dk, dv) = match q.dtype() {
            candle_core::DType::F32 => grads!(f32),
            candle_core::DType::F64 => grads!(f64),
            other => candle_core::bail!("fused attention backward: {other:?} is not supported"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `softmax(q kᵀ · scale) v` for `q: [BH, N, D]`, `k, v: [BH, M, D]` -> `[BH, N, D]`, f32 or f64
/// on the CPU, differentiable in all three inputs.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Sdpa { scale })
}

/// Whether [`attention`] can run on tensors of this device and dtype.
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}
