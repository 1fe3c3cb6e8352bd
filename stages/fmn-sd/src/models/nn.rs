//! Layers whose every op has a backward pass: LayerNorm on fmn-ops' GroupNorm (candle's fused
//! `layer_norm` drops gradients), GroupNorm, linear and convolution layers on
//! `fmn-ops`' kernels. Each is read from a `VarBuilder` by its `load` constructor.
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm over the last dimension (`torch.nn.LayerNorm` semantics, biased variance).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
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
        let wide = fmn_ops::widened(dtype);
        let c = xs.dim(D::Minus1)?;
        // Each row is a GroupNorm sample of one channel and one group, with unit affine: one
        // op with its own backward (the composed mean/centre/variance chain took 13× PyTorch's
        // time and kept five temporaries per call; BENCHMARKS.md#faster-than-pytorch-side-by-side).
        let rows = xs.elem_count() / c.max(1);
        let (one, zero) = (
            Tensor::ones(1, wide, xs.device())?,
            Tensor::zeros(1, wide, xs.device())?,
        );
        let normed = fmn_ops::group_norm::group_norm(
            &xs.to_dtype(wide)?.reshape((rows, 1, c))?,
            1,
            &one,
            &zero,
            self.eps,
        )?
        .reshape(xs.shape())?;
        fmn_ops::row_affine::scale_shift(&normed.to_dtype(dtype)?, &self.weight, &self.bias)
    }
}

/// `torch.nn.GroupNorm`, computed by [`fmn_ops::group_norm::group_norm`] (one op with its own
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
        fmn_ops::group_norm::group_norm(xs, self.groups, &self.weight, &self.bias, self.eps)
    }
}

impl GroupNorm {
    /// A GroupNorm read from `vb` (`weight` starts at one, `bias` at zero when created fresh).
    pub fn load(vb: VarBuilder, num_groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "{}: {channels} channels cannot be split into {num_groups} groups",
                vb.prefix()
            )
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
            groups: num_groups,
            eps,
        })
    }
}

/// A linear layer (`torch.nn.Linear` weights `[out, in]`, optional bias) whose backward skips
/// the weight's gradient when the weight is not trained (see [`fmn_ops::frozen_matmul`]).
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
        let y = fmn_ops::frozen_matmul::matmul(&x.reshape((rows, in_dim))?, &self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => fmn_ops::row_affine::add_bias(&y, b)?,
            None => y,
        };
        let mut out_shape = dims[..dims.len().saturating_sub(1)].to_vec();
        out_shape.push(out_dim);
        y.reshape(out_shape)
    }
}

impl Linear {
    /// A linear layer read from `vb` (`weight`, and `bias` if `bias`); fresh weights are
    /// initialised as `torch.nn.Linear` does.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
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
        Ok(Self { weight, bias })
    }
}

/// A 2-D convolution (`torch.nn.Conv2d` weights `[out, in, k, k]` and optional bias) computed
/// by [`fmn_ops::conv::conv2d`], whose backward pass is fast on the CPU.
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
        fmn_ops::conv::conv2d_biased(
            xs,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}

impl Conv2d {
    /// A biased convolution read from `vb` (`weight`, `bias`); fresh weights are initialised as
    /// candle-nn's `conv2d` does (Kaiming-normal kernel, uniform bias).
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
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
        Ok(Self {
            weight,
            bias: Some(bias),
            stride,
            padding,
        })
    }
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
