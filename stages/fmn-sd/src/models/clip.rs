//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`).
//!
//! Weight names follow transformers: `embeddings.token_embedding.weight`,
//! `encoder.layers.{i}.self_attn.q_proj.weight`, `final_layer_norm.weight`, ... Files written by
//! transformers 4.x (every released SD checkpoint) put all of them under a `text_model.` prefix;
//! transformers 5 writes them without it. [`ClipTextModel::new`] accepts both.
//!
//! Every op has a backward pass, so the encoder (or extra token rows, as in textual inversion)
//! can be trained.
/// transformers' CLIP `initializer_range` (0.02): how fresh embeddings are drawn (only used
/// when a model is built from scratch, e.g. the toy world's).
const EMBEDDING_INIT: candle_nn::Init = candle_nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

use crate::models::nn::{Activation, LayerNorm, Linear};
use crate::{Result, SdError};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use fmn_ops::softmax::softmax_last_dim;
use serde::Deserialize;
use std::path::Path;

/// The keys of transformers' `CLIPTextConfig` (a text encoder's `config.json`) that the model
/// uses; other keys are ignored. Defaults are transformers' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD 1.x, OpenAI CLIP) or `gelu` (SD 2.x, OpenCLIP).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// Reads and validates a text encoder's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::io::json::read_json(path)?;
        cfg.validate()
            .map_err(|e| SdError::config(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The MLP activation named by `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(SdError::Unsupported(format!(
                "text encoder config: hidden_act = {other:?} (supported: \"quick_gelu\", \"gelu\")"
            ))),
        }
    }

    /// Checks the values this implementation cannot handle.
    pub fn validate(&self) -> Result<()> {
        self.activation()?;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(SdError::Unsupported(format!(
                    "text encoder config: {key} = 0"
                )));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(SdError::Unsupported(format!(
                "text encoder config: num_attention_heads = {} does not divide hidden_size = {}",
                self.num_attention_heads, self.hidden_size
            )));
        }
        Ok(())
    }
}

fn to_candle(e: SdError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

#[derive(Debug, Clone)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
        })
    }

    /// `[B, T, D]`, mask `[T, T]` (0 / -inf) -> `[B, T, D]`
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let heads = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q_proj.forward(xs)?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipMlp {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, act: Activation) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::load(vb.pp("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, act: Activation) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(vb.pp("layer_norm1"), d, cfg.layer_norm_eps)?,
            mlp: ClipMlp::new(vb.pp("mlp"), cfg, act)?,
            layer_norm2: LayerNorm::load(vb.pp("layer_norm2"), d, cfg.layer_norm_eps)?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        xs + h
    }
}

/// transformers' `CLIPTextModel`: token + position embeddings, pre-LayerNorm transformer layers
/// with a causal mask, final LayerNorm. No pooling or projection (Stable Diffusion conditions on
/// the whole `last_hidden_state`).
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextModel {
    /// Builds the model from `vb`, which holds either transformers 5 names
    /// (`embeddings.token_embedding.weight`) or the same under `text_model.` (transformers 4).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        cfg.validate().map_err(to_candle)?;
        let act = cfg.activation().map_err(to_candle)?;
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let token_embedding = emb.pp("token_embedding").get_with_hints(
            (cfg.vocab_size, d),
            "weight",
            EMBEDDING_INIT,
        )?;
        let position_embedding = emb.pp("position_embedding").get_with_hints(
            (cfg.max_position_embeddings, d),
            "weight",
            EMBEDDING_INIT,
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), cfg, act))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(vb.pp("final_layer_norm"), d, cfg.layer_norm_eps)?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            config: cfg.clone(),
        })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or `model.fp16.safetensors`) as f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_dtype(dir, device, DType::F32)
    }

    /// As [`ClipTextModel::load`], with the weights converted to `dtype`.
    pub fn load_with_dtype(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        crate::io::weights::build_from_dir(dir, "model", dtype, device, |vb| Self::new(vb, &cfg))
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The width `D` of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The number of rows of the token embedding table.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The longest sequence the position embeddings cover (77).
    pub fn max_position_embeddings(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The token embedding table `[vocab_size, D]`.
    pub fn token_embedding_table(&self) -> &Tensor {
        &self.token_embedding
    }

    /// The median norm of the token table's rows (SD 1.x: about 0.4; the toy model: 0.16).
    pub fn median_token_norm(&self) -> Result<f64> {
        let norms = self
            .token_embedding
            .to_dtype(DType::F32)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_vec1::<f32>()?;
        let mut sorted: Vec<f32> = norms.into_iter().filter(|n| n.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        Ok(sorted.get(sorted.len() / 2).copied().map_or(0.0, f64::from))
    }

    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// `input_ids [B, T]` (u32 or i64, `T <= 77`) -> `last_hidden_state [B, T, D]` (after the
    /// final LayerNorm).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let embeds = self.token_embeddings(input_ids, None)?;
        self.forward_from_token_embeddings(&embeds)
    }

    /// As [`ClipTextModel::forward`], with the vocabulary extended by `extra_rows [n, D]`: an id
    /// `vocab_size + j` takes row `j` of `extra_rows` (tokens appended to the tokenizer, as
    /// textual inversion adds them). Differentiable with respect to `extra_rows`.
    ///
    /// `input_ids [B, T]`, `extra_rows [n, D]` -> `[B, T, D]`
    pub fn forward_with_token_embeddings(
        &self,
        input_ids: &Tensor,
        extra_rows: &Tensor,
    ) -> Result<Tensor> {
        let embeds = self.token_embeddings(input_ids, Some(extra_rows))?;
        self.forward_from_token_embeddings(&embeds)
    }

    /// Looks up the token embeddings (no positions): `input_ids [B, T]`, optional
    /// `extra_rows [n, D]` for ids `>= vocab_size` -> `[B, T, D]`.
    pub fn token_embeddings(
        &self,
        input_ids: &Tensor,
        extra_rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2().map_err(|_| {
            SdError::Invalid(format!(
                "text encoder input_ids must be [batch, tokens], got {:?}",
                input_ids.dims()
            ))
        })?;
        let d = self.hidden_size();
        let vocab = self.vocab_size();
        let n_extra = match extra_rows {
            None => 0,
            Some(rows) => {
                let (n, rd) = rows.dims2().map_err(|_| {
                    SdError::Invalid(format!(
                        "extra_rows must be [n, {d}], got {:?}",
                        rows.dims()
                    ))
                })?;
                if rd != d {
                    return Err(SdError::Invalid(format!(
                        "extra_rows must be [n, {d}], got {:?}",
                        rows.dims()
                    )));
                }
                n
            }
        };
        let ids: Vec<i64> = match input_ids.dtype() {
            DType::U32 => input_ids
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I64 => input_ids.flatten_all()?.to_vec1::<i64>()?,
            DType::U8 => input_ids
                .flatten_all()?
                .to_vec1::<u8>()?
                .into_iter()
                .map(i64::from)
                .collect(),
            other => {
                return Err(SdError::Invalid(format!(
                    "text encoder input_ids must be integers, got {other:?}"
                )))
            }
        };
        let limit = (vocab + n_extra) as i64;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= limit) {
            return Err(SdError::Invalid(format!(
                "token id {bad} is outside the vocabulary (size {vocab}{})",
                if n_extra > 0 {
                    format!(" + {n_extra} extra rows")
                } else {
                    String::new()
                }
            )));
        }
        let device = self.device();
        let base_ids: Vec<u32> = ids
            .iter()
            .map(|&id| if id < vocab as i64 { id as u32 } else { 0 })
            .collect();
        let base_idx = Tensor::from_vec(base_ids, b * t, device)?;
        let mut embeds = self.token_embedding.index_select(&base_idx, 0)?;
        if let Some(rows) = extra_rows {
            if ids.iter().any(|&id| id >= vocab as i64) {
                let extra_ids: Vec<u32> = ids
                    .iter()
                    .map(|&id| {
                        if id >= vocab as i64 {
                            (id - vocab as i64) as u32
                        } else {
                            0
                        }
                    })
                    .collect();
                let is_extra: Vec<u8> =
                    ids.iter().map(|&id| u8::from(id >= vocab as i64)).collect();
                let extra_idx = Tensor::from_vec(extra_ids, b * t, device)?;
                let extra = rows.to_dtype(embeds.dtype())?.index_select(&extra_idx, 0)?;
                let mask =
                    Tensor::from_vec(is_extra, (b * t, 1), device)?.broadcast_as((b * t, d))?;
                embeds = mask.where_cond(&extra, &embeds)?;
            }
        }
        Ok(embeds.reshape((b, t, d))?)
    }

    /// Runs the transformer on token embeddings (positions are added here):
    /// `[B, T, D]` -> `last_hidden_state [B, T, D]`.
    pub fn forward_from_token_embeddings(&self, token_embeds: &Tensor) -> Result<Tensor> {
        let (_b, t, d) = token_embeds.dims3().map_err(|_| {
            SdError::Invalid(format!(
                "token embeddings must be [batch, tokens, {}], got {:?}",
                self.hidden_size(),
                token_embeds.dims()
            ))
        })?;
        if d != self.hidden_size() {
            return Err(SdError::Invalid(format!(
                "token embeddings must be [batch, tokens, {}], got {:?}",
                self.hidden_size(),
                token_embeds.dims()
            )));
        }
        if t == 0 || t > self.max_position_embeddings() {
            return Err(SdError::Invalid(format!(
                "text encoder takes 1..={} tokens, got {t}",
                self.max_position_embeddings()
            )));
        }
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let mut xs = token_embeds.broadcast_add(&positions)?;
        let mask = causal_mask(t, xs.dtype(), xs.device())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(self.final_layer_norm.forward(&xs)?)
    }
}

/// `[T, T]`: 0 where key <= query, -inf above the diagonal.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|q| (0..t).map(move |k| if k <= q { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(data, (t, t), device)?.to_dtype(dtype)
}
