//! A CLIP model folder (Hugging Face `CLIPModel` layout: `config.json`, `model.safetensors`,
//! `preprocessor_config.json`, tokenizer files or else the CLIP tokenizer shipped in `data/`) as
//! judge, through candle-transformers' CLIP:
//! - attribute `label`: zero-shot classification among every `label` the suite expects (plus
//!   the lines of `labels.txt` in the folder, if any) with the prompt "a photo of {label}"; sure
//!   when the top label's probability is at least 0.5;
//! - CLIP score of an image and its own prompt: `100 · max(cos(image, text), 0)`.
//!
//! The images are preprocessed exactly as transformers 4.x's `CLIPImageProcessor` does with the
//! folder's `preprocessor_config.json` (Pillow's resampler included): [`ClipProcessor`].
mod pil_resize;
mod processor;

pub use processor::{ClipProcessor, ResizeTo};

use super::{Judge, Judgement};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::clip::{text_model, vision_model, ClipConfig, ClipModel};
use fmn_sd::io::tokenizer::ClipTokenizer;
use image::RgbImage;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top label's probability needed to be sure of it.
const MIN_CONFIDENCE: f32 = 0.5;

#[derive(Debug, Deserialize)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
}

#[derive(Debug, Deserialize)]
struct HfVisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "three")]
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
}

#[derive(Debug, Deserialize)]
struct HfConfig {
    text_config: HfTextConfig,
    vision_config: HfVisionConfig,
    projection_dim: usize,
    #[serde(default = "logit_scale")]
    logit_scale_init_value: f32,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn three() -> usize {
    3
}
fn logit_scale() -> f32 {
    2.6592
}

pub struct ClipJudge {
    dir: PathBuf,
    model: ClipModel,
    tokenizer: ClipTokenizer,
    /// `preprocessor_config.json`'s CLIPImageProcessor.
    processor: ClipProcessor,
    /// The vision model's input size (`vision_config.image_size`).
    image_size: usize,
    /// Zero-shot classes: `labels.txt` plus every `label` the suite expects.
    labels: RefCell<BTreeSet<String>>,
    /// The normalised text embeddings of `labels` (computed at the first judgement).
    label_embeds: RefCell<Option<(Vec<String>, Tensor)>>,
    logit_scale: f32,
}

fn shipped_tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/clip-tokenizer")
}

impl ClipJudge {
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("--judge clip:{}: cannot read config.json", dir.display()))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a CLIPModel config", cfg_path.display()))?;
        for (what, act) in [
            ("text_config", &hf.text_config.hidden_act),
            ("vision_config", &hf.vision_config.hidden_act),
        ] {
            if act != "quick_gelu" {
                bail!(
                    "{}: {what}.hidden_act is `{act}`; the CLIP judge supports quick_gelu (OpenAI CLIP)",
                    cfg_path.display()
                );
            }
        }
        let t = &hf.text_config;
        let v = &hf.vision_config;
        let config = ClipConfig {
            text_config: text_model::ClipTextConfig {
                vocab_size: t.vocab_size,
                embed_dim: t.hidden_size,
                activation: text_model::Activation::QuickGelu,
                intermediate_size: t.intermediate_size,
                max_position_embeddings: t.max_position_embeddings,
                pad_with: None,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                projection_dim: hf.projection_dim,
            },
            vision_config: vision_model::ClipVisionConfig {
                embed_dim: v.hidden_size,
                activation: text_model::Activation::QuickGelu,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                projection_dim: hf.projection_dim,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
            },
            logit_scale_init_value: hf.logit_scale_init_value,
            image_size: v.image_size,
        };
        let weights = fmn_sd::io::weights::find_weights_file(dir, "model")
            .with_context(|| format!("--judge clip:{}", dir.display()))?;
        let vb = fmn_sd::io::weights::mmap_var_builder(&weights, DType::F32, &Device::Cpu)?;
        let model = ClipModel::new(vb, &config)
            .with_context(|| format!("{}: not a CLIPModel's weights", weights.display()))?;
        let logit_scale = {
            let vb = fmn_sd::io::weights::mmap_var_builder(&weights, DType::F32, &Device::Cpu)?;
            if vb.contains_tensor("logit_scale") {
                vb.get(&[], "logit_scale")?.exp()?.to_scalar::<f32>()?
            } else {
                hf.logit_scale_init_value.exp()
            }
        };
        let has_tokenizer =
            dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file();
        let tokenizer = if has_tokenizer {
            ClipTokenizer::from_dir(dir)?
        } else {
            let d = shipped_tokenizer();
            ClipTokenizer::from_files(&d.join("vocab.json"), &d.join("merges.txt"))?
        };
        let pre_path = dir.join("preprocessor_config.json");
        let processor = if pre_path.is_file() {
            ClipProcessor::from_file(&pre_path)?
        } else {
            // No processor config: the model's input size, CLIP's other defaults.
            let s = u32::try_from(v.image_size)?;
            ClipProcessor {
                size: ResizeTo::ShortestEdge(s),
                crop_height: s,
                crop_width: s,
                ..ClipProcessor::default()
            }
        };
        let mut labels = BTreeSet::new();
        let labels_file = dir.join("labels.txt");
        if labels_file.is_file() {
            for l in std::fs::read_to_string(&labels_file)?.lines() {
                if !l.trim().is_empty() {
                    labels.insert(l.trim().to_string());
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            processor,
            image_size: v.image_size,
            labels: RefCell::new(labels),
            label_embeds: RefCell::new(None),
            logit_scale,
        })
    }

    /// The image processor (`preprocessor_config.json`).
    pub fn processor(&self) -> &ClipProcessor {
        &self.processor
    }

    /// `CLIPImageProcessor(**json)` of a `preprocessor_config.json`, without a model.
    pub fn read_processor(file: &Path) -> Result<ClipProcessor> {
        ClipProcessor::from_file(file)
    }

    /// transformers' `CLIPImageProcessor(images)["pixel_values"]`: `[N, 3, H, W]`, which must
    /// be the vision model's `image_size` square.
    pub fn pixels(&self, images: &[RgbImage]) -> Result<Tensor> {
        let lut = self.processor.lut();
        let mut rows = Vec::with_capacity(images.len());
        for img in images {
            let (data, h, w) = ClipProcessor::apply_lut(&lut, &self.processor.pixels_u8(img)?);
            if (h, w) != (self.image_size, self.image_size) {
                bail!(
                    "{}: preprocessing a {}x{} image gives {w}x{h} pixels, but the model takes {}x{} (check `size`, `crop_size` and `do_center_crop`)",
                    self.dir.join("preprocessor_config.json").display(),
                    img.width(),
                    img.height(),
                    self.image_size,
                    self.image_size
                );
            }
            rows.push(Tensor::from_vec(data, (3, h, w), &Device::Cpu)?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Normalised image embeddings `[N, P]`.
    pub fn image_embeds(&self, images: &[RgbImage]) -> Result<Tensor> {
        let feats = self.model.get_image_features(&self.pixels(images)?)?;
        Ok(normalise(&feats)?)
    }

    /// Normalised text embeddings `[N, P]`.
    pub fn text_embeds(&self, prompts: &[&str]) -> Result<Tensor> {
        let ids = self.tokenizer.encode_batch(prompts)?;
        let ids = Tensor::new(ids, &Device::Cpu)?;
        let feats = self.model.get_text_features(&ids)?;
        Ok(normalise(&feats)?)
    }

    /// `logit_scale · cos` for every image and prompt: `[N images, M prompts]`.
    pub fn logits(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Tensor> {
        let i = self.image_embeds(images)?;
        let t = self.text_embeds(prompts)?;
        Ok((i.matmul(&t.t()?)? * self.logit_scale as f64)?)
    }

    fn labels_and_embeds(&self) -> Result<(Vec<String>, Tensor)> {
        if let Some(x) = self.label_embeds.borrow().as_ref() {
            return Ok(x.clone());
        }
        let labels: Vec<String> = self.labels.borrow().iter().cloned().collect();
        if labels.len() < 2 {
            bail!(
                "--judge clip:{}: zero-shot classification needs at least two labels (the suite's `label` values and {}/labels.txt give {})",
                self.dir.display(),
                self.dir.display(),
                labels.len()
            );
        }
        let prompts: Vec<String> = labels.iter().map(|l| format!("a photo of {l}")).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let embeds = self.text_embeds(&refs)?;
        *self.label_embeds.borrow_mut() = Some((labels.clone(), embeds.clone()));
        Ok((labels, embeds))
    }
}

fn normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

impl Judge for ClipJudge {
    fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in expect {
            if k != "label" {
                return Err(format!(
                    "the CLIP judge has no attribute `{k}` (it knows `label`)"
                ));
            }
            self.labels.borrow_mut().insert(v.clone());
        }
        Ok(())
    }

    fn judge(&self, images: &[RgbImage]) -> Result<Vec<Judgement>> {
        let (labels, text) = self.labels_and_embeds()?;
        let logits = (self.image_embeds(images)?.matmul(&text.t()?)? * self.logit_scale as f64)?;
        let probs = candle_nn_softmax(&logits)?;
        let probs: Vec<Vec<f32>> = probs.to_vec2()?;
        Ok(probs
            .into_iter()
            .map(|p| {
                let (best, conf) = p
                    .iter()
                    .copied()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, 0.0));
                let sure = conf >= MIN_CONFIDENCE;
                Judgement {
                    labels: BTreeMap::from([(
                        "label".to_string(),
                        sure.then(|| labels[best].clone()),
                    )]),
                    description: format!(
                        "{}{} ({:.0} %)",
                        labels[best],
                        if sure { "" } else { "?" },
                        conf * 100.0
                    ),
                }
            })
            .collect())
    }

    fn clip_scores(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Option<Vec<f64>>> {
        let i = self.image_embeds(images)?;
        let t = self.text_embeds(prompts)?;
        let cos: Vec<f32> = (i * t)?.sum(D::Minus1)?.to_vec1()?;
        Ok(Some(
            cos.into_iter()
                .map(|c| 100.0 * f64::from(c).max(0.0))
                .collect(),
        ))
    }
}

/// Row-wise softmax (inference only).
fn candle_nn_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
