//! The command-line option groups of every stage that loads a Stable Diffusion model, flattened
//! into its arguments (`#[command(flatten)]`): [`ModelArgs`] (where the model comes from) and
//! [`DeviceArgs`] (where it runs).
use candle_core::Device;
use clap::{Args, ValueEnum};
use fmn_sd::io::source::{ModelSource, SourceOptions};
use fmn_sd::sample::scheduler::PredictionType;
use std::path::{Path, PathBuf};

/// `--model`, `--model-config`, `--prediction-type`.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Diffusers model folder or single-file .safetensors checkpoint (SD 1.x/2.x, original
    /// layout) [default: the shipped toy model, or $FMN_TOY_MODEL].
    #[arg(long, value_name = "DIR_OR_FILE")]
    pub model: Option<PathBuf>,
    /// With a single-file --model: a diffusers folder whose `*/config.json`, scheduler and
    /// tokenizer to use instead of the standard SD 1.x / 2.x ones (as diffusers'
    /// `from_single_file(config=...)`).
    #[arg(long, value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    /// What the UNet predicts, overriding the model's scheduler config (SD 2.x 768-v
    /// checkpoints predict velocity: `v_prediction`).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub prediction_type: Option<PredictionArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum PredictionArg {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[value(name = "v_prediction")]
    #[serde(rename = "v_prediction")]
    VPrediction,
}

impl ModelArgs {
    /// `--model`, else the shipped toy model.
    pub fn path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(fmn_core::default_model_dir)
    }

    pub fn options(&self) -> SourceOptions {
        SourceOptions {
            config_dir: self.model_config.clone(),
            prediction_type: self.prediction_type.map(|p| match p {
                PredictionArg::Epsilon => PredictionType::Epsilon,
                PredictionArg::VPrediction => PredictionType::VPrediction,
            }),
        }
    }

    /// Opens the model with these options.
    pub fn open(&self) -> fmn_sd::Result<ModelSource> {
        self.open_at(&self.path())
    }

    /// Opens `model` (in place of `--model`) with these options.
    pub fn open_at(&self, model: &Path) -> fmn_sd::Result<ModelSource> {
        ModelSource::open(model, &self.options())
    }
}

/// `--device`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
        }
    }
}

impl DeviceArgs {
    pub fn device(&self) -> fmn_sd::Result<Device> {
        fmn_sd::device::from_name(&self.device)
    }
}
