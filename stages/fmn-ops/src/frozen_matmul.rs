//! Matrix products whose backward skips the operand that needs no gradient.
//!
//! candle's backward computes a gradient for both operands of every matmul, also for a weight
//! that is not trained: at SD 1.5 size a textual-inversion step (frozen UNet) spent most of its
//! time and memory on the 860 M weights' gradients (BENCHMARKS.md#sd-15-size-inversion-step).
//! When exactly one operand is part of the graph (`track_op`), the product is run as a custom
//! op on that operand alone, holding the other as a constant, so backward computes only the
//! gradient that is used. The products themselves go through [`crate::blas`] (OpenBLAS when
//! it is loaded, with both operands in the graph too), else candle's matmul.
use crate::blas::product;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor,
};

/// `x @ rhs` with `rhs` constant.
struct ConstRhs(Tensor);
/// `lhs @ x` with `lhs` constant.
struct ConstLhs(Tensor);
/// `a @ b` with both in the graph, through the BLAS ([`crate::blas`]).
struct Both;

/// The CPU storage of `x` (contiguous) as a tensor of its own.
fn as_tensor(storage: &CpuStorage, layout: &Layout) -> Result<Tensor> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen matmul: operand not contiguous".into()))?;
    let shape = layout.shape();
    match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &Device::Cpu),
        other => Err(candle_core::Error::Msg(format!(
            "frozen matmul: unsupported dtype {:?}",
            other.dtype()
        ))),
    }
}

fn into_storage(t: Tensor) -> Result<(CpuStorage, Shape)> {
    let t = t.contiguous()?;
    let shape = t.shape().clone();
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen matmul: result not contiguous".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) if start == 0 && end == v.len() => {
            Ok((CpuStorage::F32(v.clone()), shape))
        }
        Storage::Cpu(CpuStorage::F64(v)) if start == 0 && end == v.len() => {
            Ok((CpuStorage::F64(v.clone()), shape))
        }
        Storage::Cpu(CpuStorage::F32(v)) => Ok((CpuStorage::F32(v[start..end].to_vec()), shape)),
        Storage::Cpu(CpuStorage::F64(v)) => Ok((CpuStorage::F64(v[start..end].to_vec()), shape)),
        _ => Err(candle_core::Error::Msg(
            "frozen matmul: unexpected result storage".into(),
        )),
    }
}

impl CustomOp1 for ConstRhs {
    fn name(&self) -> &'static str {
        "matmul-const-rhs"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        into_storage(product(&as_tensor(s, l)?, &self.0)?)
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
        into_storage(product(&self.0, &as_tensor(s, l)?)?)
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
        into_storage(product(&as_tensor(s1, l1)?, &as_tensor(s2, l2)?)?)
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

/// `a @ b` for 2-D `a [M, K]`, `b [K, N]`: equal to `a.matmul(b)`, but when only one operand
/// takes part in the graph (on the CPU, f32/f64) its backward computes only that operand's
/// gradient. Otherwise it is `a.matmul(b)`.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let applicable = a.device().is_cpu()
        && a.rank() == 2
        && b.rank() == 2
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), DType::F32 | DType::F64);
    if !applicable {
        return a.matmul(b);
    }
    match (a.track_op(), b.track_op()) {
        (true, false) => a.contiguous()?.apply_op1(ConstRhs(b.clone())),
        (false, true) => b.contiguous()?.apply_op1(ConstLhs(a.clone())),
        (false, false) => product(a, b),
        (true, true) if crate::blas::backend()?.is_some() => {
            a.contiguous()?.apply_op2(&b.contiguous()?, Both)
        }
        (true, true) => a.matmul(b),
    }
}
