//! `UNet2DConditionModel` as used by Stable Diffusion 1.x and 2.x.
pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod resample;
pub mod transformer;

use crate::models::attention::Attention;
use crate::models::nn::{Conv2d, GroupNorm};
use crate::models::probes::AttentionRecorder;
use crate::models::resnet::ResnetSettings;
use blocks::{DownBlock, MidBlock, UpBlock, UpChannels};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
pub use config::UNetConfig;
use embeddings::{TimestepEmbedding, Timesteps};
use transformer::TransformerSettings;

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UNetConfig,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> candle_core::Result<Self> {
        let blocks = cfg.resolve().map_err(candle_core::Error::msg)?;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let time_embed_dim = ch[0] * 4;
        let resnet = ResnetSettings {
            groups,
            eps: cfg.norm_eps,
            act: cfg.act_fn,
            temb_channels: Some(time_embed_dim),
            output_scale_factor: 1.0,
        };
        let transformer = |i: usize, channels: usize| TransformerSettings {
            heads: blocks.heads[i],
            head_dim: channels / blocks.heads[i],
            layers: blocks.transformer_layers[i],
            context_dim: blocks.cross_dims[i],
            groups,
            use_linear_projection: cfg.use_linear_projection,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = ch[0];
        for (i, &block_ch) in ch.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = block_ch;
            let t = transformer(i, out_ch);
            down_blocks.push(DownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                in_ch,
                out_ch,
                blocks.layers[i],
                &resnet,
                blocks.has_cross_attention[i].then_some(&t),
                i + 1 < n,
                cfg.downsample_padding,
            )?);
        }

        let mid_resnet = ResnetSettings {
            output_scale_factor: cfg.mid_block_scale_factor,
            ..resnet
        };
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            ch[n - 1],
            1,
            &mid_resnet,
            &transformer(n - 1, ch[n - 1]),
        )?;

        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = ch[n - 1];
        for i in 0..n {
            let r = n - 1 - i; // the down block this up block mirrors
            let prev_out_ch = out_ch;
            out_ch = ch[r];
            let in_ch = ch[r.saturating_sub(1)];
            let t = transformer(r, out_ch);
            let cross = cfg.up_block_types[i] == "CrossAttnUpBlock2D";
            up_blocks.push(UpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                UpChannels {
                    in_ch,
                    prev_out_ch,
                    out_ch,
                },
                blocks.layers[r] + 1,
                &resnet,
                cross.then_some(&t),
                i + 1 < n,
            )?);
        }

        Ok(Self {
            time_proj: Timesteps::new(ch[0], cfg.flip_sin_to_cos, cfg.freq_shift),
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                ch[0],
                time_embed_dim,
                cfg.act_fn,
            )?,
            conv_in: Conv2d::load(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(vb.pp("conv_norm_out"), groups, ch[0], cfg.norm_eps)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), ch[0], cfg.out_channels, 3, 1, 1)?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every cross-attention (`attn2`) module, down, mid and up blocks in diffusers' order.
    pub fn cross_attentions(&self) -> Vec<&Attention> {
        let down = self.down_blocks.iter().flat_map(|b| b.transformers());
        let mid = self.mid_block.transformers();
        let up = self.up_blocks.iter().flat_map(|b| b.transformers());
        down.chain(mid)
            .chain(up)
            .flat_map(|t| t.blocks().iter().map(|b| b.cross_attention()))
            .collect()
    }

    /// `sample: [B, in, h, w]`, `timesteps: [B]` or `[1]` (float), `context: [B, 77, cross_dim]`
    /// -> `[B, out, h, w]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.forward_with_probe(sample, timesteps, context, None)
    }

    /// As [`Self::forward`], handing every cross-attention's probabilities to `recorder`.
    pub fn forward_with_probe(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        recorder: Option<&AttentionRecorder>,
    ) -> candle_core::Result<Tensor> {
        let (b, _, h, w) = sample.dims4()?;
        let up_factor = 1usize << (self.up_blocks.len() - 1);
        let odd_size = h % up_factor != 0 || w % up_factor != 0;

        let sample = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let timesteps = match timesteps.elem_count() {
            1 => timesteps.flatten_all()?.repeat(b)?,
            _ => timesteps.clone(),
        };
        let temb = self
            .time_proj
            .forward(&timesteps)?
            .to_dtype(sample.dtype())?;
        let temb = self.time_embedding.forward(&temb)?;

        let mut xs = self.conv_in.forward(&sample)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&xs, &temb, context, recorder)?;
            xs = out;
            skips.extend(block_skips);
        }
        xs = self.mid_block.forward(&xs, &temb, context, recorder)?;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let used = block.num_layers();
            let rest = skips.len() - used;
            let block_skips = skips.split_off(rest);
            let upsample_size = if odd_size && i + 1 < self.up_blocks.len() {
                let (_, _, sh, sw) = skips[skips.len() - 1].dims4()?;
                Some((sh, sw))
            } else {
                None
            };
            xs = block.forward(&xs, &block_skips, &temb, context, upsample_size, recorder)?;
        }
        let xs = self
            .config
            .act_fn
            .apply(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
