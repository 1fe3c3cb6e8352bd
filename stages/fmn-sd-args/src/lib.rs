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
/// ([`fmn_cli::parse`]), sets the process up for tensor work
/// ([`fmn_core::tune_for_tensors`]: allocator and threads) and runs `execute` on the arguments.
pub fn run_stage<A: fmn_cli::StageArgs, E>(
    execute: impl FnOnce(&A) -> Result<ExitCode, E>,
) -> Result<ExitCode, E> {
    let args = fmn_cli::parse::<A>();
    fmn_core::tune_for_tensors();
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

/// A training stage's request as the pre-flight memory check sees it.
#[derive(Debug, Clone, Copy)]
pub struct TrainingRequest {
    /// The training resolution (`None`: the model's default, as the stage resolves it).
    pub resolution: Option<usize>,
    pub batch: usize,
    /// Parameters that get gradients and AdamW moments.
    pub trainable_params: u64,
    /// Whether the text encoder is in the graph (textual inversion).
    pub text_encoder_in_graph: bool,
    /// Whether any training step runs (a solve-only re-steering holds no activations).
    pub steps: bool,
}

/// Refuses a training run whose estimated peak memory (every component's weights in f32, the
/// VAE encoding the training images, then the training step; without steps the text encoder
/// and the trained weights alone) exceeds `--max-memory` or the
/// available memory, before any weight is loaded. `stage` names the run in the message.
pub fn check_training_memory(
    source: &ModelSource,
    request: &TrainingRequest,
    limit: Option<u64>,
    stage: &str,
) -> fmn_sd::Result<()> {
    use fmn_sd::memory::{self, Workload};
    let (unet, vae) = (source.unet_config()?, source.vae_config()?);
    let resolution = request
        .resolution
        .unwrap_or(unet.default_image_side(vae.downscale_factor()));
    // Without steps (the solve alone) only the text encoder and the trained weights are
    // loaded, and no image is encoded.
    let (size, mut phases) = if request.steps {
        (memory::ModelSize::of(source)?, vec![(Workload::Encode, 1)])
    } else {
        let size = memory::ModelSize {
            unet: request.trainable_params,
            vae: 0,
            text_encoder: source.parameter_count("text_encoder")?,
        };
        (size, Vec::new())
    };
    if request.steps {
        phases.push((
            Workload::Train {
                trainable_params: request.trainable_params,
                optimizer: true,
                text_encoder_in_graph: request.text_encoder_in_graph,
            },
            request.batch,
        ));
    }
    let estimate = memory::estimate(
        &size,
        &memory::Configs {
            unet: Some(&unet),
            vae: Some(&vae),
        },
        &memory::Request {
            height: resolution,
            width: resolution,
            dtype: candle_core::DType::F32,
            phases,
        },
    );
    let what = if request.steps {
        format!(
            "{stage} at {resolution}x{resolution}, batch {}, {:.1} M trainable parameters",
            request.batch,
            request.trainable_params as f64 / 1e6
        )
    } else {
        format!("{stage} without training steps")
    };
    estimate.check(&what, limit)
}

/// Refuses a prompt search that scores `prompts` prompts at once (their keys and values through
/// every `attn2`, with every component's weights loaded) when its estimated peak exceeds
/// `--max-memory` or the available memory, before any weight is loaded.
pub fn check_search_memory(
    source: &ModelSource,
    prompts: usize,
    limit: Option<u64>,
    what: &str,
) -> fmn_sd::Result<()> {
    use fmn_sd::memory;
    let text = source.text_encoder_config()?;
    let context_dim = text.hidden_size as u64;
    let kv_weights = source.parameter_count_where("unet", |name| {
        name.ends_with(".attn2.to_k.weight") || name.ends_with(".attn2.to_v.weight")
    })?;
    let estimate = memory::estimate(
        &memory::ModelSize::of(source)?,
        &memory::Configs::default(),
        &memory::Request {
            height: 0,
            width: 0,
            dtype: candle_core::DType::F32,
            phases: vec![(
                memory::Workload::KeyValues {
                    tokens: text.max_position_embeddings,
                    width: kv_weights / context_dim.max(1),
                    context_dim,
                },
                prompts,
            )],
        },
    );
    tracing::debug!("estimated peak memory: {}", estimate.describe());
    estimate.check(&format!("{what} scoring {prompts} prompts at once"), limit)
}

/// A sampling request as the pre-flight memory check sees it: `images` of `height`×`width`
/// denoised in one batch (doubled by classifier-free guidance), then decoded.
#[derive(Debug, Clone, Copy)]
pub struct SamplingRequest {
    pub height: usize,
    pub width: usize,
    pub dtype: candle_core::DType,
    pub images: usize,
    pub guided: bool,
}

/// Refuses a sampling run whose estimated peak memory (every component's weights, the guided
/// UNet batch, then the decode) exceeds `--max-memory` or the available memory, before any
/// weight is loaded. `what` names the run in the message.
pub fn check_sampling_memory(
    source: &ModelSource,
    request: &SamplingRequest,
    limit: Option<u64>,
    what: &str,
) -> fmn_sd::Result<()> {
    use fmn_sd::memory;
    let (unet, vae) = (source.unet_config()?, source.vae_config()?);
    let copies = if request.guided { 2 } else { 1 };
    let estimate = memory::estimate(
        &memory::ModelSize::of(source)?,
        &memory::Configs {
            unet: Some(&unet),
            vae: Some(&vae),
        },
        &memory::Request {
            height: request.height,
            width: request.width,
            dtype: request.dtype,
            phases: vec![
                (memory::Workload::Forward, copies * request.images),
                (memory::Workload::Decode, request.images),
            ],
        },
    );
    tracing::debug!("estimated peak memory: {}", estimate.describe());
    estimate.check(
        &format!(
            "{what} {} image(s) of {}x{} at once",
            request.images, request.width, request.height
        ),
        limit,
    )
}

/// `--device`.
#[derive(Debug, Clone, Default, Args, serde::Serialize)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature) [default: cpu].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub memory: fmn_cli::MemoryArgs,
}

impl DeviceArgs {
    pub fn device(&self) -> fmn_sd::Result<Device> {
        fmn_sd::device::from_name(self.device.as_deref().unwrap_or("cpu"))
    }
}
