//! Building blocks whose every op has a backward pass in candle.
//!
//! candle's fused `softmax_last_dim`, `layer_norm` and `rms_norm` kernels return correct values
//! but no gradient, so training code must use the compositions below.
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Half-precision inputs are normalised in f32; f32 and f64 stay as they are.
fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// Softmax over the last dimension, composed of differentiable ops; f16/bf16 inputs are
/// computed in f32 and cast back.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(compute_dtype(dtype))?;
    // Subtracting the (detached) row maximum changes nothing mathematically and keeps exp finite.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)?.to_dtype(dtype)
}

/// LayerNorm over the last dimension (`torch.nn.LayerNorm` semantics, biased variance).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    /// `[.., C] -> [.., C]`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(compute_dtype(dtype))?;
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centered = xs.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        crate::row_affine::scale_shift(&normed.to_dtype(dtype)?, &self.weight, &self.bias)
    }
}

/// `torch.nn.GroupNorm`, computed by [`crate::group_norm::group_norm`] (one op with its own
/// backward on the CPU).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Module for GroupNorm {
    /// `[B, C, ...] -> [B, C, ...]`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::group_norm::group_norm(xs, self.groups, &self.weight, &self.bias, self.eps)
    }
}

/// A GroupNorm read from `vb` (`weight` starts at one, `bias` at zero when created fresh).
pub fn group_norm(
    vb: VarBuilder,
    num_groups: usize,
    channels: usize,
    eps: f64,
) -> Result<GroupNorm> {
    if num_groups == 0 || !channels.is_multiple_of(num_groups) {
        candle_core::bail!(
            "{}: {channels} channels cannot be split into {num_groups} groups",
            vb.prefix()
        )
    }
    Ok(GroupNorm {
        weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
        bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
        groups: num_groups,
        eps,
    })
}

/// A linear layer (`torch.nn.Linear` weights `[out, in]`, optional bias) whose backward skips
/// the weight's gradient when the weight is not trained (see [`crate::frozen_matmul`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    /// `[..., in] -> [..., out]`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let out_dim = self.weight.dim(0)?;
        let y = crate::frozen_matmul::matmul(&x.reshape((rows, in_dim))?, &self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => crate::row_affine::add_bias(&y, b)?,
            None => y,
        };
        let mut out_shape = dims.to_vec();
        *out_shape.last_mut().expect("rank >= 1") = out_dim;
        y.reshape(out_shape)
    }
}

pub fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = if bias {
        let bound = 1. / (in_dim as f64).sqrt();
        Some(vb.get_with_hints(
            out_dim,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

/// A 2-D convolution (`torch.nn.Conv2d` weights `[out, in, k, k]` and optional bias) computed
/// by [`crate::conv::conv2d`], whose backward pass is fast on the CPU.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    /// `[B, in, H, W] -> [B, out, H', W']`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::conv::conv2d_biased(
            xs,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}

/// A biased convolution read from `vb` (`weight`, `bias`); fresh weights are initialised as
/// candle-nn's `conv2d` does (Kaiming-normal kernel, uniform bias).
pub fn conv2d(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let weight = vb.get_with_hints(
        (out_channels, in_channels, kernel, kernel),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1.0 / ((in_channels * kernel * kernel) as f64).sqrt();
    let bias = vb.get_with_hints(
        out_channels,
        "bias",
        candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Conv2d {
        weight,
        bias: Some(bias),
        stride,
        padding,
    })
}

/// The activations diffusers and transformers name in their configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    #[serde(alias = "swish")]
    Swish,
    /// Exact (erf) GELU, `torch.nn.functional.gelu`.
    Gelu,
    /// `x * sigmoid(1.702 x)` as in OpenAI CLIP.
    QuickGelu,
}

impl Activation {
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu | Activation::Swish => xs.silu(),
            Activation::Gelu => xs.gelu_erf(),
            Activation::QuickGelu => xs.mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
        }
    }
}

/// Nearest-neighbour x2 upsampling `[B, C, H, W] -> [B, C, 2H, 2W]`, written as a broadcast so
/// that its gradient accumulates like any other op's.
pub fn upsample_nearest_2x(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}
