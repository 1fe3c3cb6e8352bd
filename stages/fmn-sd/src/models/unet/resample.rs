//! `Downsample2D` and `Upsample2D` with their convolutions.
use crate::models::nn::{upsample_nearest_2x, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Stride-2 convolution; with `padding == 0` the input is first padded by one pixel on the
/// right and bottom, as diffusers does for the VAE encoder.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), in_ch, out_ch, 3, 2, padding)?,
            padding,
        })
    }

    /// `[B, C, H, W] -> [B, out, ceil(H/2), ceil(W/2)]`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let xs = xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// Nearest-neighbour ×2 (or to an explicit size) followed by a 3×3 convolution. The explicit
/// size (odd latent sizes) uses candle's `upsample_nearest2d`, whose backward overwrites rather
/// than accumulates the input gradient; it is only reached in inference at such sizes.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), in_ch, out_ch, 3, 1, 1)?,
        })
    }

    /// `[B, C, H, W] -> [B, out, 2H, 2W]`, or `[B, out, size.0, size.1]` when `size` is given.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let upsampled = match size {
            Some((th, tw)) => xs.upsample_nearest2d(th, tw)?,
            None => upsample_nearest_2x(xs)?,
        };
        self.conv.forward(&upsampled)
    }
}
