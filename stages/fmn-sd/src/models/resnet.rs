//! diffusers' `ResnetBlock2D` (pre-norm, additive timestep embedding when given), shared by
//! the UNet and the VAE.
use crate::models::nn::{Activation, Conv2d, GroupNorm, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    act: Activation,
    output_scale_factor: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    /// `None` for blocks without a timestep input (the VAE's).
    pub temb_channels: Option<usize>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, in_ch: usize, out_ch: usize, s: &ResnetSettings) -> Result<Self> {
        let time_emb_proj = match s.temb_channels {
            Some(t) => Some(Linear::load(vb.pp("time_emb_proj"), t, out_ch, true)?),
            None => None,
        };
        let conv_shortcut = if in_ch != out_ch {
            Some(Conv2d::load(
                vb.pp("conv_shortcut"),
                in_ch,
                out_ch,
                1,
                1,
                0,
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), s.groups, in_ch, s.eps)?,
            conv1: Conv2d::load(vb.pp("conv1"), in_ch, out_ch, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::load(vb.pp("norm2"), s.groups, out_ch, s.eps)?,
            conv2: Conv2d::load(vb.pp("conv2"), out_ch, out_ch, 3, 1, 1)?,
            conv_shortcut,
            act: s.act,
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `xs: [B, in, H, W]`, `temb: [B, temb_channels]` -> `[B, out, H, W]`
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self
            .conv1
            .forward(&self.act.apply(&self.norm1.forward(xs)?)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj
                .forward(&self.act.apply(temb)?)?
                .unsqueeze(2)?
                .unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self
            .conv2
            .forward(&self.act.apply(&self.norm2.forward(&h)?)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
