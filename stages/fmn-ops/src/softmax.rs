//! Softmax composed of differentiable ops (candle's fused `softmax_last_dim` drops gradients).
use candle_core::{Result, Tensor, D};

/// Softmax over the last dimension; f16/bf16 inputs are computed in f32 and cast back.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(crate::widened(dtype))?;
    // Subtracting the (detached) row maximum changes nothing mathematically and keeps exp finite.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)?.to_dtype(dtype)
}
