//! Matrix products whose backward skips the operand that needs no gradient.
//!
//! candle's backward computes a gradient for both operands of every matmul, also for a weight
//! that is not trained: at SD 1.5 size a textual-inversion step (frozen UNet) spent most of its
//! time and memory on the 860 M weights' gradients (BENCHMARKS.md#sd-15-size-inversion-step).
//! When exactly one operand is part of the graph (`track_op`), the product is run as a custom
//! op on that operand alone, holding the other as a constant, so backward computes only the
//! gradient that is used. Every product here is [`crate::blas`]'s, read in place from the
//! operands' storage (OpenBLAS when it is loaded, else the `gemm` crate).
use crate::blas::{product, product_cpu};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor,
};

/// `x @ rhs` with `rhs` constant.
struct ConstRhs(Tensor);
/// `lhs @ x` with `lhs` constant.
struct ConstLhs(Tensor);
/// `a @ b` with both in the graph.
struct Both;

/// `x @ c` (`const_right`) or `c @ x` with the constant `c`, on the CPU storages in place; an
/// error for values [`product_cpu`] does not take (non-CPU constants, other dtypes, batched
/// layouts: [`matmul`] only builds these ops for 2-D f32/f64 CPU operands).
fn with_const(
    x: &CpuStorage,
    lx: &Layout,
    c: &Tensor,
    const_right: bool,
) -> Result<(CpuStorage, Shape)> {
    let (sc, lc) = c.storage_and_layout();
    let Storage::Cpu(sc) = &*sc else {
        candle_core::bail!("frozen matmul: the constant operand is not on the CPU");
    };
    let out = if const_right {
        product_cpu(x, lx, sc, lc)?
    } else {
        product_cpu(sc, lc, x, lx)?
    };
    out.ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "frozen matmul: operands {:?} ({:?}) and {:?} ({:?}) are not 2-D matrices of one dtype",
            lx.shape(),
            x.dtype(),
            lc.shape(),
            sc.dtype()
        ))
    })
}

impl CustomOp1 for ConstRhs {
    fn name(&self) -> &'static str {
        "matmul-const-rhs"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_const(s, l, &self.0, true)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(product(grad, &self.0.t()?)?))
    }
}

impl CustomOp1 for ConstLhs {
    fn name(&self) -> &'static str {
        "matmul-const-lhs"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_const(s, l, &self.0, false)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(product(&self.0.t()?, grad)?))
    }
}

impl CustomOp2 for Both {
    fn name(&self) -> &'static str {
        "matmul-blas"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        product_cpu(s1, l1, s2, l2)?.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "matmul: {:?} and {:?} are not 2-D matrices of one dtype",
                l1.shape(),
                l2.shape()
            ))
        })
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(product(grad, &b.t()?)?), Some(product(&a.t()?, grad)?)))
    }
}

/// `a @ b` for 2-D `a [M, K]`, `b [K, N]`: equal to `a.matmul(b)` (to rounding), but on the CPU
/// in f32/f64 computed by [`crate::blas`], and when only one operand takes part in the graph
/// its backward computes only that operand's gradient. Otherwise it is `a.matmul(b)`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let applicable = a.device().is_cpu()
        && a.rank() == 2
        && b.rank() == 2
        && a.dims()[1] == b.dims()[0]
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), DType::F32 | DType::F64);
    if !applicable {
        return a.matmul(b);
    }
    match (a.track_op(), b.track_op()) {
        (true, false) => a.apply_op1(ConstRhs(b.clone())),
        (false, true) => b.apply_op1(ConstLhs(a.clone())),
        (false, false) => product(a, b),
        (true, true) => a.apply_op2(b, Both),
    }
}
