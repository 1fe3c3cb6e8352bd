//! Tensor ops whose gradients work, apart from the networks that use them.
//!
//! candle's fused `softmax_last_dim`, `layer_norm` and `rms_norm` kernels return correct values
//! but no gradient, and several of its CPU backward passes are slow at image sizes. Here:
//! - CPU kernels with their own backward pass: [`conv`] (im2col convolution, the one every
//!   crate uses), [`group_norm`], [`row_affine`] (biases, LayerNorm's affine part),
//!   [`frozen_matmul`] (no gradient for a constant operand), [`fused_attention`] and [`geglu`];
//! - [`softmax`]: softmax composed of differentiable ops;
//! - [`noise`]: seeded Gaussian tensors, the same on every platform;
//! - [`blas`]: the matrix products of these ops, through OpenBLAS when it can be loaded;
//!   [`softmax_rows`]: the fused attention's row softmax; [`vmath`]: vectorisable f32 `exp`, `erf`.
//!
//! Each kernel is checked against candle's own op and central finite differences (`tests/`).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod blas;
pub mod conv;
mod cpu_op;
pub mod frozen_matmul;
pub mod fused_attention;
pub mod geglu;
pub mod group_norm;
pub mod noise;
pub mod row_affine;
pub mod softmax;
pub mod softmax_rows;
pub mod vmath;

/// The dtype half-precision values are computed in (f32); f32 and f64 stay as they are.
pub fn widened(dtype: candle_core::DType) -> candle_core::DType {
    match dtype {
        candle_core::DType::F16 | candle_core::DType::BF16 => candle_core::DType::F32,
        other => other,
    }
}
