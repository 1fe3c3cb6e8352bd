//! Scaled dot-product attention as one CPU op with its own backward pass.
//!
//! Composed of candle ops, attention materialises the `[B·H, N, M]` scores and probabilities
//! several times over (matmul, max, exp, sum, div, and as many again backwards); at SD sizes
//! that is gigabytes per layer, and on the toy UNet a quarter of a training step
//! (BENCHMARKS.md#custom-cpu-ops-what-each-bought). Here each (batch, head) pair is computed
//! in blocks of query rows (gemm products of the block), and the backward pass recomputes each
//! block's probabilities instead of storing them (as FlashAttention does), so memory stays
//! O(N·D) plus one `[64, M]` block per thread.
//!
//! Used where the probabilities themselves are not needed; probes take the composed path.
use crate::blas::{Blas, Element, MatRef as View};
use crate::softmax_rows::SoftmaxRows;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

struct Sdpa {
    scale: f64,
}

/// The sizes of one call and the scale of its scores.
#[derive(Clone, Copy)]
struct Dims {
    bh: usize,
    n: usize,
    m: usize,
    d: usize,
    scale: f64,
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    crate::cpu_op::contiguous_slice(data, layout, "fused attention", what)
}

/// Query rows handled together: the `[ROWS, M]` score block stays in cache at SD sizes
/// (M ≤ 4,096 → 1 MiB in f32) while each product is large enough for the gemm kernels.
const ROWS: usize = 64;

/// `dst (row-major a.rows × b.cols) = factor·a·b` (`+=` with `accumulate`) on this thread:
/// the caller parallelises over (batch, head) pairs.
fn matmul_scaled<T: Element>(
    blas: Option<&Blas>,
    dst: &mut [T],
    a: View<T>,
    b: View<T>,
    accumulate: bool,
    factor: T,
) {
    crate::blas::gemm(blas, dst, a, b, accumulate, factor)
}

fn matmul_into<T: Element>(
    blas: Option<&Blas>,
    dst: &mut [T],
    a: View<T>,
    b: View<T>,
    accumulate: bool,
) {
    matmul_scaled(blas, dst, a, b, accumulate, T::one())
}

/// Probabilities of the query rows `q` (`[rows, D]`) against the keys `k` (`[M, D]`) into `p`.
fn probabilities<T: Element + SoftmaxRows>(
    blas: Option<&Blas>,
    q: View<T>,
    k: View<T>,
    scale: T,
    p: &mut [T],
) {
    matmul_scaled(blas, p, q, k.t(), false, scale);
    T::softmax_rows(p, k.rows);
}

/// Splits the query rows of one (batch, head) pair into blocks of at most [`ROWS`].
fn blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(ROWS).map(move |i0| (i0, (i0 + ROWS).min(n)))
}

fn forward<T: Element + SoftmaxRows>(
    blas: Option<&Blas>,
    q: &[T],
    k: &[T],
    v: &[T],
    s: Dims,
) -> Vec<T> {
    let Dims { n, m, d, .. } = s;
    let scale = T::from(s.scale).unwrap_or_else(T::one);
    let mut out = vec![T::zero(); s.bh * n * d];
    out.par_chunks_mut(n * d).enumerate().for_each(|(b, o)| {
        let k = View::new(&k[b * m * d..(b + 1) * m * d], m, d);
        let v = View::new(&v[b * m * d..(b + 1) * m * d], m, d);
        let mut p = vec![T::zero(); ROWS.min(n) * m];
        for (i0, i1) in blocks(n) {
            let r = i1 - i0;
            let qb = View::new(&q[(b * n + i0) * d..(b * n + i1) * d], r, d);
            probabilities(blas, qb, k, scale, &mut p[..r * m]);
            matmul_into(
                blas,
                &mut o[i0 * d..i1 * d],
                View::new(&p[..r * m], r, m),
                v,
                false,
            );
        }
    });
    out
}

/// Gradients `(dq, dk, dv)` of attention with output `out` and output gradient `dout`.
fn backward<T: Element + SoftmaxRows>(
    blas: Option<&Blas>,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    dout: &[T],
    s: Dims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let Dims { n, m, d, .. } = s;
    let scale = T::from(s.scale).unwrap_or_else(T::one);
    let mut dq = vec![T::zero(); s.bh * n * d];
    let mut dk = vec![T::zero(); s.bh * m * d];
    let mut dv = vec![T::zero(); s.bh * m * d];
    dq.par_chunks_mut(n * d)
        .zip(dk.par_chunks_mut(m * d))
        .zip(dv.par_chunks_mut(m * d))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let k = View::new(&k[b * m * d..(b + 1) * m * d], m, d);
            let v = View::new(&v[b * m * d..(b + 1) * m * d], m, d);
            let rows = ROWS.min(n);
            let (mut p, mut dp) = (vec![T::zero(); rows * m], vec![T::zero(); rows * m]);
            for (i0, i1) in blocks(n) {
                let r = i1 - i0;
                let span = (b * n + i0) * d..(b * n + i1) * d;
                let qb = View::new(&q[span.clone()], r, d);
                let gb = View::new(&dout[span.clone()], r, d);
                let (p, dp) = (&mut p[..r * m], &mut dp[..r * m]);
                probabilities(blas, qb, k, scale, p);
                matmul_into(blas, dv, View::new(p, r, m).t(), gb, true);
                matmul_into(blas, dp, gb, v.t(), false);
                // d(softmax): ds_j = p_j (dp_j - Σ_l p_l dp_l), and Σ_l p_l dp_l = dout_i · out_i.
                for ((prow, dprow), (g, o)) in p
                    .chunks(m)
                    .zip(dp.chunks_mut(m))
                    .zip(gb.data.chunks(d).zip(out[span.clone()].chunks(d)))
                {
                    let row_dot = g.iter().zip(o).fold(T::zero(), |a, (&x, &y)| a + x * y);
                    for (ds, &pj) in dprow.iter_mut().zip(prow) {
                        *ds = pj * (*ds - row_dot) * scale;
                    }
                }
                let ds = View::new(dp, r, m);
                matmul_into(blas, &mut dq[i0 * d..i1 * d], ds, k, false);
                matmul_into(blas, dk, ds.t(), qb, true);
            }
        });
    (dq, dk, dv)
}

fn dims(q: &Layout, k: &Layout, v: &Layout, scale: f64) -> Result<Dims> {
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
    Ok(Dims { bh, n, m, d, scale })
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
        let s = dims(l1, l2, l3, self.scale)?;
        let shape = Shape::from((s.bh, s.n, s.d));
        fn run<T: Element + SoftmaxRows + WithDType>(
            q: &[T],
            k: &[T],
            v: &[T],
            ls: [&Layout; 3],
            s: Dims,
        ) -> Result<Vec<T>> {
            let q = contiguous(q, ls[0], "q")?;
            let k = contiguous(k, ls[1], "k")?;
            let v = contiguous(v, ls[2], "v")?;
            Ok(forward(crate::blas::backend()?, q, k, v, s))
        }
        let ls = [l1, l2, l3];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(run(q, k, v, ls, s)?)
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                CpuStorage::F64(run(q, k, v, ls, s)?)
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
        let s = Dims {
            bh,
            n,
            m,
            d,
            scale: self.scale,
        };
        let dev = q.device();
        macro_rules! grads {
            ($t:ty) => {{
                let get = |x: &Tensor| -> Result<Vec<$t>> { x.flatten_all()?.to_vec1::<$t>() };
                let (dq, dk, dv) = backward(
                    crate::blas::backend()?,
                    &get(q)?,
                    &get(k)?,
                    &get(v)?,
                    &get(out)?,
                    &get(dout)?,
                    s,
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
