//! `x + b` and `x · w + b` over the last dimension (linear biases, LayerNorm's affine part) as
//! CPU ops with their own backward pass.
//!
//! Composed of candle's broadcast ops, the gradient of `b` (and `w`) is a sum over every
//! leading dimension, which candle reduces element by element on one thread: 6 % of a toy
//! training step (perf, BENCHMARKS.md#custom-cpu-ops-what-each-bought). Here those sums run
//! over contiguous rows in parallel.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    crate::cpu_op::contiguous_slice(data, layout, "row affine", what)
}

/// Rows per parallel task: enough to amortise a partial-sum vector per task.
const ROWS_PER_TASK: usize = 256;

/// Column sums of a row-major `[rows, c]` matrix.
fn column_sums<T: Float + Send + Sync>(data: &[T], c: usize) -> Vec<T> {
    if c == 0 {
        return Vec::new();
    }
    data.par_chunks(ROWS_PER_TASK * c)
        .map(|block| {
            let mut acc = vec![T::zero(); c];
            for row in block.chunks(c) {
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a = *a + x;
                }
            }
            acc
        })
        .reduce(
            || vec![T::zero(); c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = *x + y;
                }
                a
            },
        )
}

/// `Σ` over every dimension but the last: `[.., C] -> [C]`.
fn sum_rows(t: &Tensor) -> Result<Tensor> {
    let c = t.dim(candle_core::D::Minus1)?;
    let flat = t.flatten_all()?;
    match t.dtype() {
        candle_core::DType::F32 => {
            Tensor::from_vec(column_sums(&flat.to_vec1::<f32>()?, c), c, t.device())
        }
        candle_core::DType::F64 => {
            Tensor::from_vec(column_sums(&flat.to_vec1::<f64>()?, c), c, t.device())
        }
        other => candle_core::bail!("row affine backward: {other:?} is not supported"),
    }
}

/// `out[r, j] = x[r, j] · w[j] + b[j]` (`w = None`: 1).
fn affine<T: Float + Send + Sync>(x: &[T], w: Option<&[T]>, b: &[T]) -> Vec<T> {
    let c = b.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(x.par_chunks(ROWS_PER_TASK * c))
        .for_each(|(o, x)| {
            for (orow, xrow) in o.chunks_mut(c).zip(x.chunks(c)) {
                match w {
                    Some(w) => {
                        for (((o, &x), &w), &b) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
                            *o = x * w + b;
                        }
                    }
                    None => {
                        for ((o, &x), &b) in orow.iter_mut().zip(xrow).zip(b) {
                            *o = x + b;
                        }
                    }
                }
            }
        });
    out
}

fn check(x: &Layout, params: &[&Layout]) -> Result<usize> {
    let c = *x.shape().dims().last().unwrap_or(&0);
    for p in params {
        if p.shape().dims() != [c] {
            candle_core::bail!(
                "row affine: parameter {:?} does not match the last dimension {c} of {:?}",
                p.shape(),
                x.shape()
            );
        }
    }
    if c == 0 {
        candle_core::bail!("row affine: empty last dimension in {:?}", x.shape());
    }
    Ok(c)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fmn-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check(l1, &[l2])?;
        fn run<T: Float + WithDType + Send + Sync>(
            x: &[T],
            b: &[T],
            l: [&Layout; 2],
        ) -> Result<Vec<T>> {
            Ok(affine(
                contiguous(x, l[0], "x")?,
                None,
                contiguous(b, l[1], "b")?,
            ))
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => CpuStorage::F32(run(x, b, [l1, l2])?),
            (CpuStorage::F64(x), CpuStorage::F64(b)) => CpuStorage::F64(run(x, b, [l1, l2])?),
            _ => candle_core::bail!("add bias: x and b must both be f32 or both f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(sum_rows(&grad.contiguous()?)?)))
    }
}

struct ScaleShift;

impl CustomOp3 for ScaleShift {
    fn name(&self) -> &'static str {
        "fmn-scale-shift"
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
        check(l1, &[l2, l3])?;
        fn run<T: Float + WithDType + Send + Sync>(
            x: &[T],
            w: &[T],
            b: &[T],
            l: [&Layout; 3],
        ) -> Result<Vec<T>> {
            Ok(affine(
                contiguous(x, l[0], "x")?,
                Some(contiguous(w, l[1], "w")?),
                contiguous(b, l[2], "b")?,
            ))
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(run(x, w, b, [l1, l2, l3])?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(run(x, w, b, [l1, l2, l3])?)
            }
            _ => candle_core::bail!("scale shift: x, w and b must all be f32 or all f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.broadcast_mul(w)?;
        let dw = sum_rows(&(&grad * x)?)?;
        let db = sum_rows(&grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// `x + b` with `x: [.., C]`, `b: [C]`, differentiable in both.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(x) && x.dtype() == b.dtype() {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}

/// `x · w + b` with `x: [.., C]`, `w, b: [C]`, differentiable in all three.
pub fn scale_shift(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(x) && x.dtype() == w.dtype() && x.dtype() == b.dtype() {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, ScaleShift)
    } else {
        x.broadcast_mul(w)?.broadcast_add(b)
    }
}
