//! The `fmn-sample` command line: settings from `--config` (optional), overridden by flags.
use crate::settings::SampleSettings;
use anyhow::Result;
use clap::Parser;
use fmn_cli::{OutputArgs, StageArgs};
use fmn_sd::device::ComputeDType;
use fmn_sd::sample::scheduler::SamplerKind;
use fmn_sd_args::{DeviceArgs, ModelArgs};
use serde::Serialize;
use std::path::PathBuf;

/// Sample images from a Stable Diffusion model (diffusers folder or single-file checkpoint).
#[derive(Debug, Parser)]
#[command(name = "fmn-sample", version)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Settings from a YAML file: any setting below under its long name with `_`
    /// (`num_images: 8`, `prompt: [..]`, `model`, `device`, `dtype`); flags override them.
    #[arg(long, value_name = "FILE.yaml")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Safetensors file with tensor `latents` [N, 4, h, w]: the starting noise (as diffusers'
    /// `latents=` argument, scaled by the sampler's init_noise_sigma), reused for every prompt.
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// Write the final latents (before VAE decoding) as tensor `latents` [prompts × N, 4, h, w].
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// Write the conditional branch's cross-attention probabilities as tensors
    /// `step{i}/{module path}` [prompts × N, heads, pixels, 77] (each map's height and width
    /// in the metadata).
    #[arg(long, value_name = "FILE")]
    pub save_attention: Option<PathBuf>,
    #[command(flatten)]
    pub shard: crate::shard::ShardArgs,
    /// The output folder (created; files of the same names are replaced).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The settings flags, each named after its config key (`fmn_core::config::merge`); the
/// defaults are [`SampleSettings`]'.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Settings")]
pub struct SettingArgs {
    /// A weight patch (`fmn-patch/1` file) applied at load time; repeat to apply several.
    #[arg(long = "patch", value_name = "FILE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patch: Vec<PathBuf>,
    /// Learned tokens to add (`fmn-invert` output, or an AUTOMATIC1111 / diffusers embedding
    /// `.safetensors`); prompts then use its tokens (or its trigger word). Repeatable.
    #[arg(long = "embedding", value_name = "FILE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub embedding: Vec<PathBuf>,
    /// A prompt; repeat for several. Each prompt gets --num-images images.
    #[arg(long = "prompt")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<String>,
    /// A text file with one prompt per line (blank lines skipped), added after --prompt.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// The unconditional prompt of classifier-free guidance [default: ""].
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// The sampler (ddim, euler, euler-a, dpmpp-2m), configured from the folder's
    /// scheduler_config.json [default: ddim].
    #[arg(long)]
    pub scheduler: Option<SamplerKind>,
    /// Denoising steps [default: 25].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (≤ 1 disables guidance); default: the model folder's
    /// `sampling_defaults.json` (4 for the shipped toy model), else 7.5.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Blend weight φ of the guided prediction rescaled to the conditional prediction's
    /// standard deviation (diffusers' `guidance_rescale`; Lin et al. suggest 0.7 for
    /// velocity-predicting models, which overshoot at high guidance otherwise); 0: off
    /// [default: 0].
    #[arg(long)]
    pub guidance_rescale: Option<f64>,
    /// Image width in pixels (default: the UNet's sample_size × the VAE factor).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (default: as --width).
    #[arg(long)]
    pub height: Option<usize>,
    /// Seed of image 0; image k of every prompt uses seed + k [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images per prompt (default 1, or the count in --init-latents).
    #[arg(long)]
    pub num_images: Option<usize>,
    /// Step indices for --save-attention, e.g. `0,5,10`.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attention_steps: Vec<usize>,
    /// The networks' compute dtype (the sampler's arithmetic stays f32); f16 / bf16 are for
    /// GPUs [default: f32].
    #[arg(long)]
    pub dtype: Option<ComputeDType>,
}

/// The flags that are settings: [`SettingArgs`], `--model` and `--device`.
#[derive(Serialize)]
struct Overrides<'a> {
    model: &'a Option<PathBuf>,
    device: &'a Option<String>,
    #[serde(flatten)]
    settings: &'a SettingArgs,
}

impl StageArgs for Args {
    fn output(&self) -> &OutputArgs {
        &self.output
    }
}

impl Args {
    /// The run's settings: defaults < `--config` < flags.
    pub fn settings(&self) -> Result<SampleSettings> {
        let flags = Overrides {
            model: &self.model.model,
            device: &self.device.device,
            settings: &self.settings,
        };
        Ok(fmn_core::merge(self.config.as_deref(), &flags)?)
    }
}
