//! What a sampling run does: the settings `fmn-sample` merges from its defaults, `--config`
//! and flags (keys as the long flags, with `_`).
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use fmn_sd::device::ComputeDType;
use fmn_sd::io::source::ModelSource;
use fmn_sd::sample::scheduler::SamplerKind;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSettings {
    /// The model (default: the shipped toy model).
    pub model: Option<PathBuf>,
    pub patch: Vec<PathBuf>,
    pub embedding: Vec<PathBuf>,
    pub prompt: Vec<String>,
    pub prompt_file: Option<PathBuf>,
    pub negative_prompt: String,
    pub scheduler: SamplerKind,
    pub steps: usize,
    pub guidance: Option<f64>,
    pub guidance_rescale: f64,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: u64,
    pub num_images: Option<usize>,
    pub attention_steps: Vec<usize>,
    pub device: String,
    pub dtype: ComputeDType,
}

impl Default for SampleSettings {
    fn default() -> Self {
        Self {
            model: None,
            patch: Vec::new(),
            embedding: Vec::new(),
            prompt: Vec::new(),
            prompt_file: None,
            negative_prompt: String::new(),
            scheduler: SamplerKind::Ddim,
            steps: 25,
            guidance: None,
            guidance_rescale: 0.0,
            width: None,
            height: None,
            seed: 0,
            num_images: None,
            attention_steps: Vec::new(),
            device: "cpu".into(),
            dtype: ComputeDType::F32,
        }
    }
}

impl SampleSettings {
    pub fn model_dir(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(fmn_core::default_model_dir)
    }

    pub fn device(&self) -> Result<Device> {
        Ok(fmn_sd::device::from_name(&self.device)?)
    }

    /// `prompt`, then the lines of `prompt_file`.
    pub fn prompts(&self) -> Result<Vec<String>> {
        let mut prompts = self.prompt.clone();
        if let Some(file) = &self.prompt_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the prompt file {}", file.display()))?;
            prompts.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        if prompts.is_empty() {
            bail!("no prompt given: use --prompt TEXT or --prompt-file FILE");
        }
        Ok(prompts)
    }

    /// The steps whose attention is saved to `save_attention`, checked.
    pub fn attention_steps(&self, save_attention: Option<&Path>) -> Result<Vec<usize>> {
        if let Some(&bad) = self.attention_steps.iter().find(|&&s| s >= self.steps) {
            bail!(
                "--attention-steps {bad}: there are only {} steps (0..{})",
                self.steps,
                self.steps
            );
        }
        if save_attention.is_none() && !self.attention_steps.is_empty() {
            bail!("--attention-steps needs --save-attention FILE");
        }
        if save_attention.is_some() && self.attention_steps.is_empty() {
            bail!("--save-attention needs --attention-steps LIST (e.g. 0,12,24)");
        }
        Ok(self.attention_steps.clone())
    }

    /// `(height, width)` in pixels: given, else from the initial latents, else the model's
    /// default.
    pub fn size(&self, model: &ModelSource, init: Option<&Tensor>) -> Result<(usize, usize)> {
        let f = model.vae_config()?.downscale_factor();
        let default = match init {
            Some(t) => (t.dim(2)? * f, t.dim(3)? * f),
            None => {
                let s = model.default_image_side()?;
                (s, s)
            }
        };
        let width = self.width.or(self.height).unwrap_or(default.1);
        let height = self.height.or(self.width).unwrap_or(default.0);
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        Ok((height, width))
    }
}
