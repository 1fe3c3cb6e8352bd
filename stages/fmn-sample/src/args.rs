//! Command-line options of `fmn-sample`.
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::sample::scheduler::SamplerKind;
use std::path::PathBuf;

/// Sample images from a Stable Diffusion model (diffusers folder or single-file checkpoint).
#[derive(Debug, Parser)]
#[command(name = "fmn-sample", version)]
pub struct Args {
    /// Options from a YAML file (`num_images: 8`, `prompt: [..]`, ...); flags override them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: fmn_sd_args::ModelArgs,
    /// A weight patch (`fmn-patch/1` file) applied at load time; repeat to apply several.
    #[arg(long = "patch")]
    pub patch: Vec<PathBuf>,
    /// Learned tokens to add (`fmn-invert` output, or an AUTOMATIC1111 / diffusers embedding
    /// `.safetensors`); prompts then use its tokens (or its trigger word). Repeatable.
    #[arg(long = "embedding")]
    pub embedding: Vec<PathBuf>,
    /// A prompt; repeat for several. Each prompt gets --num-images images.
    #[arg(long = "prompt")]
    pub prompt: Vec<String>,
    /// A text file with one prompt per line (blank lines skipped), added after --prompt.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// The unconditional prompt of classifier-free guidance.
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// The sampler, configured from the folder's scheduler_config.json.
    #[arg(long, default_value = "ddim")]
    pub scheduler: SamplerKind,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1 disables guidance); default: the model folder's
    /// `sampling_defaults.json` (4 for the shipped toy model), else 7.5.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Blend weight φ of the guided prediction rescaled to the conditional prediction's
    /// standard deviation (diffusers' `guidance_rescale`; Lin et al. suggest 0.7 for
    /// velocity-predicting models, which overshoot at high guidance otherwise); 0: off.
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// Image width in pixels (default: the UNet's sample_size × the VAE factor).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (default: as --width).
    #[arg(long)]
    pub height: Option<usize>,
    /// Seed of image 0; image k of every prompt uses seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per prompt (default 1, or the count in --init-latents).
    #[arg(long)]
    pub num_images: Option<usize>,
    /// Safetensors file with tensor `latents` [N, 4, h, w]: the starting noise (as diffusers'
    /// `latents=` argument, scaled by the sampler's init_noise_sigma), reused for every prompt.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Write the final latents (before VAE decoding) as tensor `latents` [prompts × N, 4, h, w].
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Write the conditional branch's cross-attention probabilities as tensors
    /// `step{i}/{module path}` [prompts × N, heads, pixels, 77].
    #[arg(long)]
    pub save_attention: Option<PathBuf>,
    /// Step indices for --save-attention, e.g. `0,5,10`.
    #[arg(long, value_delimiter = ',')]
    pub attention_steps: Vec<usize>,
    #[command(flatten)]
    pub shard: crate::shard::ShardArgs,
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The networks' compute dtype (the sampler's arithmetic stays f32); f16 / bf16 are for GPUs.
    #[arg(long, default_value = "f32")]
    pub dtype: fmn_sd::device::ComputeDType,
    /// The output folder (created; files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Log progress details on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Args {
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

    pub fn device(&self) -> Result<Device> {
        Ok(fmn_sd::device::from_name(&self.device)?)
    }

    pub fn attention_steps(&self) -> Result<Vec<usize>> {
        if let Some(&bad) = self.attention_steps.iter().find(|&&s| s >= self.steps) {
            bail!(
                "--attention-steps {bad}: there are only {} steps (0..{})",
                self.steps,
                self.steps
            );
        }
        if self.save_attention.is_none() && !self.attention_steps.is_empty() {
            bail!("--attention-steps needs --save-attention FILE");
        }
        if self.save_attention.is_some() && self.attention_steps.is_empty() {
            bail!("--save-attention needs --attention-steps LIST (e.g. 0,12,24)");
        }
        Ok(self.attention_steps.clone())
    }

    /// `(height, width)` in pixels: given, else from --init-latents, else the model's default.
    pub fn size(&self, model: &StableDiffusion, init: Option<&Tensor>) -> Result<(usize, usize)> {
        let f = model.vae.downscale_factor();
        let default = match init {
            Some(t) => (t.dim(2)? * f, t.dim(3)? * f),
            None => {
                let s = model.unet.config().sample_size.unwrap_or(64) * f;
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
