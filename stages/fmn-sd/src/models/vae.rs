//! The Stable Diffusion VAE (diffusers' `AutoencoderKL`).
//!
//! Weight names follow diffusers (`encoder.down_blocks.0.resnets.0.conv1.weight`, ...). The
//! mid-block attention is read from either the current names (`to_q`, `to_k`, `to_v`,
//! `to_out.0`) or the old ones (`query`, `key`, `value`, `proj_attn`) that SD 1.x VAE files still
//! use; diffusers renames those at load time.
//!
//! Every op has a backward pass (nearest upsampling is written as a broadcast, the downsampling
//! pad as a concatenation), so gradients flow through `encode` and `decode`.
use crate::models::nn::{Activation, Conv2d, GroupNorm, Linear};
use crate::models::resnet::{ResnetBlock2D, ResnetSettings};
use crate::{Result, SdError};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use fmn_ops::noise::NoiseRng;
use fmn_ops::softmax::softmax_last_dim;
use serde::Deserialize;
use std::path::Path;

/// The keys of diffusers' `AutoencoderKL` `config.json` that the model uses; other keys are
/// ignored. Defaults are diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_three")]
    pub in_channels: usize,
    #[serde(default = "default_three")]
    pub out_channels: usize,
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    /// An int or `[h, w]`; only informative here.
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs such VAEs in f32 even in a half-precision pipeline; callers choose the
    /// dtype here (f32 on CPU), so this is only reported.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

fn default_three() -> usize {
    3
}
fn default_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".to_string()]
}
fn default_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".to_string()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_layers_per_block() -> usize {
    1
}
fn default_act_fn() -> String {
    "silu".to_string()
}
fn default_latent_channels() -> usize {
    4
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

const RESNET_EPS: f64 = 1e-6;

impl AutoencoderKLConfig {
    /// Reads and validates a VAE's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::io::json::read_json(path)?;
        cfg.validate()
            .map_err(|e| SdError::config(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The activation named by `act_fn`.
    pub fn activation(&self) -> Result<Activation> {
        match self.act_fn.as_str() {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(SdError::Unsupported(format!(
                "VAE config: act_fn = {other:?} (supported: \"silu\", \"swish\", \"gelu\")"
            ))),
        }
    }

    /// Checks the values this implementation cannot handle.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |msg: String| Err(SdError::Unsupported(format!("VAE config: {msg}")));
        if let Some(class) = &self.class_name {
            if class != "AutoencoderKL" {
                return unsupported(format!("_class_name = {class:?} (only AutoencoderKL)"));
            }
        }
        self.activation()?;
        if self.block_out_channels.is_empty() {
            return unsupported("block_out_channels is empty".to_string());
        }
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n {
            return unsupported(format!(
                "down_block_types has {} entries for {n} block_out_channels",
                self.down_block_types.len()
            ));
        }
        if self.up_block_types.len() != n {
            return unsupported(format!(
                "up_block_types has {} entries for {n} block_out_channels",
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return unsupported(format!(
                "down_block_types contains {t:?} (only DownEncoderBlock2D)"
            ));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return unsupported(format!(
                "up_block_types contains {t:?} (only UpDecoderBlock2D)"
            ));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return unsupported(format!(
                "shift_factor = {:?} (latent shifting is not implemented)",
                self.shift_factor
            ));
        }
        if self.latents_mean.is_some() {
            return unsupported(
                "latents_mean is set (latent normalisation is not implemented)".into(),
            );
        }
        if self.latents_std.is_some() {
            return unsupported(
                "latents_std is set (latent normalisation is not implemented)".into(),
            );
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return unsupported(format!(
                "norm_num_groups = {} does not divide block_out_channels {:?}",
                self.norm_num_groups, self.block_out_channels
            ));
        }
        for (key, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return unsupported(format!("{key} = 0"));
            }
        }
        Ok(())
    }

    /// The ratio of image to latent side length: `2^(len(block_out_channels) - 1)`.
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

fn to_candle(e: SdError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// `ResnetBlock2D` without a time embedding, as the VAE uses it.
fn resnet(
    vb: VarBuilder,
    in_c: usize,
    out_c: usize,
    groups: usize,
    act: Activation,
) -> candle_core::Result<ResnetBlock2D> {
    let settings = ResnetSettings {
        groups,
        eps: RESNET_EPS,
        act,
        temb_channels: None,
        output_scale_factor: 1.0,
    };
    ResnetBlock2D::new(vb, in_c, out_c, &settings)
}

/// The single-head spatial self-attention of the VAE mid-block (residual, group-normed input).
#[derive(Debug, Clone)]
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl SpatialAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        // Old diffusers files (and every SD 1.x VAE) name the projections query/key/value/proj_attn.
        let old = vb.contains_tensor("query.weight") && !vb.contains_tensor("to_q.weight");
        let (q, k, v, o) = if old {
            ("query", "key", "value", "proj_attn")
        } else {
            ("to_q", "to_k", "to_v", "to_out.0")
        };
        Ok(Self {
            group_norm: GroupNorm::load(vb.pp("group_norm"), groups, channels, RESNET_EPS)?,
            to_q: Linear::load(vb.pp(q), channels, channels, true)?,
            to_k: Linear::load(vb.pp(k), channels, channels, true)?,
            to_v: Linear::load(vb.pp(v), channels, channels, true)?,
            to_out: Linear::load(vb.pp(o), channels, channels, true)?,
            // diffusers: attention_head_dim = channels, so heads = 1
            heads: 1,
        })
    }

    /// `[B, C, H, W] -> [B, C, H, W]`
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let n = h * w;
        let dh = c / self.heads;
        let normed = self.group_norm.forward(xs)?;
        let seq = normed.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?; // [B, N, C]
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.to_q.forward(&seq)?)?;
        let k = split(self.to_k.forward(&seq)?)?;
        let v = split(self.to_v.forward(&seq)?)?;
        let scale = (dh as f64).powf(-0.5);
        let probs = softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, c))?;
        let out = self.to_out.forward(&out)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + xs
    }
}

/// `UNetMidBlock2D` with one attention layer: resnet, (attention), resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<SpatialAttention>,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        act: Activation,
        add_attention: bool,
    ) -> candle_core::Result<Self> {
        let attention = if add_attention {
            Some(SpatialAttention::new(
                vb.pp("attentions.0"),
                channels,
                groups,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnet0: resnet(vb.pp("resnets.0"), channels, channels, groups, act)?,
            attention,
            resnet1: resnet(vb.pp("resnets.1"), channels, channels, groups, act)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.resnet0.forward(xs, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet1.forward(&h, None)
    }
}

/// `DownEncoderBlock2D`: resnets, then (except in the last block) a stride-2 conv after
/// zero-padding the right and bottom edges by one.
#[derive(Debug, Clone)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsample: Option<Conv2d>,
}

impl DownEncoderBlock {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        if let Some(conv) = &self.downsample {
            let padded = h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            h = conv.forward(&padded)?;
        }
        Ok(h)
    }
}

/// `UpDecoderBlock2D`: resnets, then (except in the last block) nearest x2 upsampling and a conv.
#[derive(Debug, Clone)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsample: Option<Conv2d>,
}

impl UpDecoderBlock {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        if let Some(conv) = &self.upsample {
            h = conv.forward(&crate::models::nn::upsample_nearest_2x(&h)?)?;
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Encoder {
    fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut out_c = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let in_c = out_c;
            out_c = c;
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let rin = if j == 0 { in_c } else { out_c };
                    resnet(vbb.pp(format!("resnets.{j}")), rin, out_c, g, act)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let downsample = if i + 1 < ch.len() {
                Some(Conv2d::load(
                    vbb.pp("downsamplers.0.conv"),
                    out_c,
                    out_c,
                    3,
                    2,
                    0,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsample,
            });
        }
        let Some(&last) = ch.last() else {
            candle_core::bail!("the VAE config has no block_out_channels");
        };
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(
                vb.pp("mid_block"),
                last,
                g,
                act,
                cfg.mid_block_add_attention,
            )?,
            conv_norm_out: GroupNorm::load(vb.pp("conv_norm_out"), g, last, RESNET_EPS)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
            act,
        })
    }

    /// `[B, 3, H, W] -> [B, 2 * latent_channels, H / f, W / f]`
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(xs)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        let h = self.act.apply(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    act: Activation,
}

impl Decoder {
    fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let conv_in = Conv2d::load(vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?;
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            rev[0],
            g,
            act,
            cfg.mid_block_add_attention,
        )?;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut out_c = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev_c = out_c;
            out_c = c;
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let rin = if j == 0 { prev_c } else { out_c };
                    resnet(vbb.pp(format!("resnets.{j}")), rin, out_c, g, act)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let upsample = if i + 1 < rev.len() {
                Some(Conv2d::load(
                    vbb.pp("upsamplers.0.conv"),
                    out_c,
                    out_c,
                    3,
                    1,
                    1,
                )?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsample });
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(vb.pp("conv_norm_out"), g, first, RESNET_EPS)?,
            conv_out: Conv2d::load(vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
            act,
        })
    }

    /// `[B, latent_channels, h, w] -> [B, 3, h * f, w * f]`
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid_block.forward(&h)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        let h = self.act.apply(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

/// The diagonal Gaussian posterior `encode` returns (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    mean: Tensor,
    logvar: Tensor,
    std: Tensor,
}

impl DiagonalGaussian {
    /// Splits encoder moments `[B, 2L, h, w]` into mean and log-variance (clamped to
    /// `[-30, 20]` as diffusers does).
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)?;
        if !c.is_multiple_of(2) {
            return Err(SdError::Invalid(format!(
                "VAE moments need an even channel count, got {:?}",
                moments.dims()
            )));
        }
        let mean = moments.narrow(1, 0, c / 2)?;
        let logvar = moments.narrow(1, c / 2, c / 2)?.clamp(-30.0, 20.0)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// `[B, L, h, w]`
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The most likely latent (the mean), `[B, L, h, w]`.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// `[B, L, h, w]`
    pub fn logvar(&self) -> &Tensor {
        &self.logvar
    }

    /// `exp(logvar / 2)`, `[B, L, h, w]`
    pub fn std(&self) -> &Tensor {
        &self.std
    }

    /// `mean + std * eps` with `eps ~ N(0, 1)` from `rng` (reparameterised: differentiable in
    /// mean and logvar), `[B, L, h, w]`.
    pub fn sample(&self, rng: &mut NoiseRng) -> Result<Tensor> {
        self.sample_with(&rng.randn(self.mean.dims(), self.mean.device())?)
    }

    /// The same distribution outside the autograd graph.
    pub fn detach(&self) -> Self {
        Self {
            mean: self.mean.detach(),
            logvar: self.logvar.detach(),
            std: self.std.detach(),
        }
    }

    /// `mean + std * eps` for given standard-normal draws `eps` (`[B, L, h, w]`, any float
    /// dtype), e.g. rows of noise drawn once for a larger batch.
    pub fn sample_with(&self, eps: &Tensor) -> Result<Tensor> {
        let eps = eps.to_dtype(self.mean.dtype())?;
        Ok((&self.mean + (&self.std * eps)?)?)
    }

    /// KL divergence to N(0, 1), summed over all but the batch dimension: `[B]`.
    pub fn kl(&self) -> Result<Tensor> {
        let var = self.logvar.exp()?;
        let terms = ((self.mean.sqr()? + var)? - 1.0)?.sub(&self.logvar)?;
        Ok((terms.flatten_from(1)?.sum(1)? * 0.5)?)
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> candle_core::Result<Self> {
        cfg.validate().map_err(to_candle)?;
        let act = cfg.activation().map_err(to_candle)?;
        let l = cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv {
            Some(Conv2d::load(vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(Conv2d::load(vb.pp("post_quant_conv"), l, l, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg, act)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg, act)?,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
        })
    }

    /// Loads `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` (or the `.fp16`
    /// variant) as f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(dir, device, DType::F32)
    }

    /// As [`AutoencoderKL::load`], with the weights converted to `dtype`.
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        crate::io::weights::build_from_dir(dir, "diffusion_pytorch_model", dtype, device, |vb| {
            Self::new(vb, &cfg)
        })
    }

    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Latents are multiplied by this before the UNet sees them (0.18215 for SD 1.x/2.x).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Image side / latent side: `2^(len(block_out_channels) - 1)` (8 for SD).
    pub fn downscale_factor(&self) -> usize {
        self.config.downscale_factor()
    }

    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// `x [B, 3, H, W]` in `[-1, 1]` -> posterior over unscaled latents
    /// `[B, latent_channels, H / f, W / f]` (f = [`AutoencoderKL::downscale_factor`]).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.config.in_channels {
            return Err(SdError::Invalid(format!(
                "VAE encode takes [batch, {}, height, width], got {dims:?}",
                self.config.in_channels
            )));
        }
        let mut moments = self.encoder.forward(x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        DiagonalGaussian::from_moments(&moments)
    }

    /// Unscaled latents `z [B, latent_channels, h, w]` (divide UNet latents by
    /// [`AutoencoderKL::scaling_factor`] first) -> image `[B, 3, h * f, w * f]`, roughly in
    /// `[-1, 1]` and not clamped.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let dims = z.dims();
        if dims.len() != 4 || dims[1] != self.config.latent_channels {
            return Err(SdError::Invalid(format!(
                "VAE decode takes [batch, {}, height, width], got {dims:?}",
                self.config.latent_channels
            )));
        }
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }
}
