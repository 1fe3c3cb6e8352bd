//! The command-line option groups of every stage that loads a Stable Diffusion model, flattened
//! into its arguments (`#[command(flatten)]`): [`ModelArgs`] (where the model comes from) and
//! [`DeviceArgs`] (where it runs) — and [`TrainingRun`], what a training stage does around
//! its run (checkpoints beside the output, the progress bar).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
#[cfg(feature = "train")]
mod run;

#[cfg(feature = "train")]
pub use run::TrainingRun;

use candle_core::Device;
use clap::{Args, ValueEnum};
use fmn_sd::io::source::{ModelSource, SourceOptions};
use fmn_sd::sample::scheduler::PredictionType;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The `cli::run` of a stage that loads a diffusion model: parses its command line
/// ([`fmn_cli::parse`]), sets the allocator up for tensor work
/// ([`fmn_core::allocator::tune_for_tensors`]) and runs `execute` on the arguments.
pub fn run_stage<A: fmn_cli::StageArgs, E>(
    execute: impl FnOnce(&A) -> Result<ExitCode, E>,
) -> Result<ExitCode, E> {
    let args = fmn_cli::parse::<A>();
    fmn_core::allocator::tune_for_tensors();
    execute(&args)
}

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

    /// Opens the model and builds what `build` makes of it; an error names the model.
    pub fn load<T>(
        &self,
        build: impl FnOnce(&ModelSource) -> fmn_sd::Result<T>,
    ) -> Result<T, LoadError> {
        self.open()
            .and_then(|source| build(&source))
            .map_err(|source| LoadError {
                model: self.path(),
                source: Box::new(source),
            })
    }

    /// Opens `model` (in place of `--model`) with these options.
    pub fn open_at(&self, model: &Path) -> fmn_sd::Result<ModelSource> {
        ModelSource::open(model, &self.options())
    }
}

/// The groups every training stage takes besides its model and output: `--device`, run
/// control (`--checkpoint-every`, `--resume`) and output (`--json`, `-q`, `-v`).
#[derive(Debug, Clone, Default, Args)]
pub struct TrainingStageArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub run: fmn_cli::RunArgs,
    #[command(flatten)]
    pub output: fmn_cli::OutputArgs,
}

/// A model that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the model {}", .model.display())]
pub struct LoadError {
    pub model: PathBuf,
    #[source]
    pub source: Box<fmn_sd::SdError>,
}

/// `--device`.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature) [default: cpu].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

impl DeviceArgs {
    pub fn device(&self) -> fmn_sd::Result<Device> {
        fmn_sd::device::from_name(self.device.as_deref().unwrap_or("cpu"))
    }
}
