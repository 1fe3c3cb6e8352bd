//! `UNet2DConditionModel`'s `config.json`, with diffusers' defaults for absent keys.
use crate::models::nn::Activation;
use crate::{Result, SdError};
use serde::Deserialize;
use std::path::Path;

/// A config value diffusers accepts either once for all blocks or as a per-block list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks; `None` if a list has the wrong length.
    pub fn expand(&self, n: usize) -> Option<Vec<T>> {
        match self {
            PerBlock::One(v) => Some(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Some(v.clone()),
            PerBlock::Each(_) => None,
        }
    }
}

fn d_channels4() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_block_out() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_one() -> usize {
    1
}
fn d_one_f() -> f64 {
    1.0
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_heads() -> Option<PerBlock<usize>> {
    Some(PerBlock::One(8))
}
fn d_t_layers() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_channels4")]
    pub in_channels: usize,
    #[serde(default = "d_channels4")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_silu")]
    pub act_fn: Activation,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_t_layers")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// diffusers' historical name for the number of heads (see `num_attention_heads`).
    #[serde(default = "d_heads")]
    pub attention_head_dim: Option<PerBlock<usize>>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub attention_type: Option<String>,
}

/// The per-block settings a [`UNetConfig`] resolves to.
#[derive(Debug, Clone)]
pub struct ResolvedBlocks {
    pub layers: Vec<usize>,
    pub heads: Vec<usize>,
    pub cross_dims: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub has_cross_attention: Vec<bool>,
}

impl UNetConfig {
    /// The side in pixels of the images the model draws by default: its latent sample size
    /// times the VAE's `vae_factor`, as diffusers' pipelines take it; where the config names
    /// none (diffusers' pipelines then fail), 64 latents: SD 1.x's 512 pixels.
    pub fn default_image_side(&self, vae_factor: usize) -> usize {
        self.sample_size.unwrap_or(64) * vae_factor
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::io::json::read_json(path)?;
        cfg.resolve().map_err(|msg| SdError::config(path, msg))?;
        Ok(cfg)
    }

    /// Number of heads per down block, applying diffusers' rule that `attention_head_dim`
    /// means the head count when `num_attention_heads` is absent.
    pub fn resolve(&self) -> std::result::Result<ResolvedBlocks, String> {
        let unsupported = |key: &str, value: &dyn std::fmt::Debug| {
            Err(format!(
                "`{key}` = {value:?} is not supported (only Stable Diffusion 1.x/2.x UNets are)"
            ))
        };
        if self.class_embed_type.is_some() {
            return unsupported("class_embed_type", &self.class_embed_type);
        }
        if self.addition_embed_type.is_some() {
            return unsupported("addition_embed_type", &self.addition_embed_type);
        }
        if self.num_class_embeds.is_some() {
            return unsupported("num_class_embeds", &self.num_class_embeds);
        }
        if self.encoder_hid_dim.is_some() {
            return unsupported("encoder_hid_dim", &self.encoder_hid_dim);
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim", &self.time_cond_proj_dim);
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention", &true);
        }
        if self.resnet_time_scale_shift != "default" {
            return unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift);
        }
        if self.time_embedding_type != "positional" {
            return unsupported("time_embedding_type", &self.time_embedding_type);
        }
        if self.time_embedding_dim.is_some() {
            return unsupported("time_embedding_dim", &self.time_embedding_dim);
        }
        if self.time_embedding_act_fn.is_some() {
            return unsupported("time_embedding_act_fn", &self.time_embedding_act_fn);
        }
        if self.timestep_post_act.is_some() {
            return unsupported("timestep_post_act", &self.timestep_post_act);
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return unsupported(
                "conv_in_kernel/conv_out_kernel",
                &(self.conv_in_kernel, self.conv_out_kernel),
            );
        }
        if let Some(a) = &self.attention_type {
            if a != "default" {
                return unsupported("attention_type", a);
            }
        }
        if let Some(c) = &self.cross_attention_norm {
            return unsupported("cross_attention_norm", c);
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return unsupported("mid_block_type", &self.mid_block_type);
        }
        if self.norm_num_groups.is_none() {
            return unsupported("norm_num_groups", &"null");
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "`down_block_types` ({}) and `up_block_types` ({}) must have one entry per `block_out_channels` ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return unsupported("down_block_types", t);
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return unsupported("up_block_types", t);
            }
        }
        let expand = |name: &str, v: &PerBlock<usize>| {
            v.expand(n)
                .ok_or_else(|| format!("`{name}` must be a number or a list of {n} numbers"))
        };
        let only_cross = self
            .only_cross_attention
            .expand(n)
            .ok_or_else(|| format!("`only_cross_attention` must be a bool or a list of {n}"))?;
        if only_cross.iter().any(|&b| b) || self.mid_block_only_cross_attention == Some(true) {
            return unsupported("only_cross_attention", &only_cross);
        }
        let heads_src = self
            .num_attention_heads
            .as_ref()
            .or(self.attention_head_dim.as_ref())
            .ok_or("neither `num_attention_heads` nor `attention_head_dim` is set")?;
        let heads = expand("attention_head_dim", heads_src)?;
        for (i, (&h, &ch)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || ch % h != 0 {
                return Err(format!(
                    "block {i}: {ch} channels cannot be split into {h} attention heads"
                ));
            }
        }
        Ok(ResolvedBlocks {
            layers: expand("layers_per_block", &self.layers_per_block)?,
            heads,
            cross_dims: expand("cross_attention_dim", &self.cross_attention_dim)?,
            transformer_layers: expand(
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            )?,
            has_cross_attention: self
                .down_block_types
                .iter()
                .map(|t| t == "CrossAttnDownBlock2D")
                .collect(),
        })
    }
}
