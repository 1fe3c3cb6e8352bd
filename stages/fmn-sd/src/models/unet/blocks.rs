//! The down, mid and up blocks of `UNet2DConditionModel`.
use super::resample::{Downsample2D, Upsample2D};
use super::transformer::{Transformer2DModel, TransformerSettings};
use crate::models::probes::AttentionRecorder;
use crate::models::resnet::{ResnetBlock2D, ResnetSettings};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        layers: usize,
        resnet: &ResnetSettings,
        transformer: Option<&TransformerSettings>,
        add_downsample: bool,
        downsample_padding: usize,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let ch = if i == 0 { in_ch } else { out_ch };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{i}")),
                ch,
                out_ch,
                resnet,
            )?);
            if let Some(t) = transformer {
                attentions.push(Transformer2DModel::new(
                    vb.pp(format!("attentions.{i}")),
                    out_ch,
                    t,
                )?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                out_ch,
                out_ch,
                downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// `[B, in, H, W] -> [B, out, H/2, W/2]` plus the skip outputs (one per layer, then the
    /// downsampled one).
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        recorder: Option<&AttentionRecorder>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, recorder)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }

    pub fn transformers(&self) -> &[Transformer2DModel] {
        &self.attentions
    }

    pub fn num_skips(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
#[derive(Debug, Clone)]
pub struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        ch: usize,
        num_layers: usize,
        resnet: &ResnetSettings,
        transformer: &TransformerSettings,
    ) -> Result<Self> {
        let first = ResnetBlock2D::new(vb.pp("resnets.0"), ch, ch, resnet)?;
        let layers = (0..num_layers)
            .map(|i| {
                Ok((
                    Transformer2DModel::new(vb.pp(format!("attentions.{i}")), ch, transformer)?,
                    ResnetBlock2D::new(vb.pp(format!("resnets.{}", i + 1)), ch, ch, resnet)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { first, layers })
    }

    pub fn transformers(&self) -> impl Iterator<Item = &Transformer2DModel> {
        self.layers.iter().map(|(t, _)| t)
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        recorder: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, Some(temb))?;
        for (attn, resnet) in &self.layers {
            xs = attn.forward(&xs, context, recorder)?;
            xs = resnet.forward(&xs, Some(temb))?;
        }
        Ok(xs)
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

/// Channel counts of one up block, named as in diffusers' `get_up_block`.
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    pub in_ch: usize,
    pub prev_out_ch: usize,
    pub out_ch: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        ch: UpChannels,
        layers: usize,
        resnet: &ResnetSettings,
        transformer: Option<&TransformerSettings>,
        add_upsample: bool,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip_ch = if i == layers - 1 { ch.in_ch } else { ch.out_ch };
            let res_in = if i == 0 { ch.prev_out_ch } else { ch.out_ch };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{i}")),
                res_in + skip_ch,
                ch.out_ch,
                resnet,
            )?);
            if let Some(t) = transformer {
                attentions.push(Transformer2DModel::new(
                    vb.pp(format!("attentions.{i}")),
                    ch.out_ch,
                    t,
                )?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers.0"),
                ch.out_ch,
                ch.out_ch,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    pub fn transformers(&self) -> &[Transformer2DModel] {
        &self.attentions
    }

    pub fn num_layers(&self) -> usize {
        self.resnets.len()
    }

    /// `xs: [B, prev_out, H, W]`, `skips`: the matching down outputs, consumed last-first
    /// -> `[B, out, 2H, 2W]` (or `upsample_size`).
    pub fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        recorder: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            xs = Tensor::cat(&[&xs, skip], 1)?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context, recorder)?;
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }
}
