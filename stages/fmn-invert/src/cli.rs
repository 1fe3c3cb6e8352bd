//! The `fmn-invert` command line: settings from `--config` (optional), overridden by flags.
use crate::config::{InvertConfig, Kind};
use crate::invert;
use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_cli::{OutputArgs, SettingsArgs, StageArgs};
use fmn_sd::io::embedding::EmbeddingLayout;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd_args::{ModelArgs, TrainingRun, TrainingStageArgs};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Textual inversion: learn new tokens that stand for the concept in a few images.
#[derive(Debug, Parser)]
#[command(name = "fmn-invert", version)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub settings: SettingsArgs<SettingArgs>,
    /// Write AUTOMATIC1111's layout (`emb_params`; invoked by the file name) instead of one
    /// tensor per token.
    #[arg(long)]
    pub a1111: bool,
    /// The embedding file to write (.safetensors).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub stage: TrainingStageArgs,
}

/// The settings flags, each named after its config key (`fmn_core::config::merge`).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Settings")]
pub struct SettingArgs {
    /// Folder of the concept's images (`instance_data_dir`).
    #[arg(long, value_name = "DIR")]
    #[serde(rename = "instance_data_dir")]
    pub images: Option<PathBuf>,
    /// Folder of masks (NAME.png per image): the loss is weighted toward the concept
    /// (`mask_dir`).
    #[arg(long, value_name = "DIR")]
    #[serde(rename = "mask_dir")]
    pub masks: Option<PathBuf>,
    /// The new tokens, e.g. "<s1> <s2>" (or "<s1>|<s2>") (`placeholder_tokens`).
    #[arg(long)]
    #[serde(rename = "placeholder_tokens")]
    pub tokens: Option<String>,
    /// Initialisers, one per token or one for all, separated by `|`: a one-token word,
    /// <rand-σ> or <zero> (`initializer_tokens`).
    #[arg(long)]
    #[serde(rename = "initializer_tokens", serialize_with = "bar_separated")]
    pub init: Option<String>,
    /// What the images show; picks the prompt templates (`use_template`).
    #[arg(long, value_enum)]
    #[serde(rename = "use_template")]
    pub kind: Option<Kind>,
    /// Training steps (`max_train_steps_ti`).
    #[arg(long)]
    #[serde(rename = "max_train_steps_ti")]
    pub steps: Option<usize>,
    /// Learning rate (`learning_rate_ti`).
    #[arg(long)]
    #[serde(rename = "learning_rate_ti")]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training resolution in pixels (default: the model's sample size × VAE factor).
    #[arg(long)]
    pub resolution: Option<usize>,
}

/// `a|b` as the list `[a, b]` (an initialiser is one token, but may be written with spaces
/// around the bars).
fn bar_separated<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    let items: Option<Vec<&str>> = v.as_ref().map(|v| {
        v.split('|')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    });
    items.serialize(s)
}

impl StageArgs for Args {
    fn output(&self) -> &OutputArgs {
        &self.stage.output
    }
}

impl Args {
    /// The run's settings: defaults < `--config` < flags, checked.
    pub fn settings(&self) -> Result<InvertConfig> {
        let s = &self.settings;
        Ok(fmn_core::merge_valid(s.config.as_deref(), &s.flags)?)
    }
}

/// Parses the command line and runs the inversion.
pub fn run() -> Result<ExitCode> {
    fmn_sd_args::run_stage(execute)
}

pub fn execute(args: &Args) -> Result<ExitCode> {
    let cfg = args.settings()?;
    let device = args.stage.device.device()?;
    let model_dir = args.model.path();
    let load_context = || format!("cannot load the model {}", model_dir.display());
    let source = args.model.open().with_context(load_context)?;
    let request = fmn_sd_args::TrainingRequest {
        resolution: cfg.resolution,
        batch: cfg.train_batch_size,
        // The learned token rows: a few thousand values.
        trainable_params: 0,
        text_encoder_in_graph: true,
        steps: cfg.max_train_steps_ti > 0,
    };
    fmn_sd_args::check_training_memory(
        &source,
        &request,
        args.stage.device.memory.max_memory,
        "inversion",
    )?;
    let run = TrainingRun::new(&args.stage, &args.out, cfg.max_train_steps_ti, "inverting")?;
    let model = StableDiffusion::load_source(&source, &device, DType::F32, &[])
        .with_context(load_context)?;
    let result = invert(&model, &cfg, &device, run.control())?;
    run.steps_done();
    let layout = if args.a1111 {
        EmbeddingLayout::A1111
    } else {
        EmbeddingLayout::Fmn
    };
    result
        .embedding
        .save(&args.out, layout)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    run.output_written();
    let r = &result.report;
    args.stage.output.report(&serde_json::json!({
                "embedding": args.out.display().to_string(),
                "tokens": result.embedding.tokens,
                "report": r,
                "norms": result.norms,
                "images": result.images,
            }), || {
        format!(
            "wrote {} ({}): loss {:.4} -> {:.4} (means of the first and last {} steps) in {} steps on {} images, {:.1} s; norms {:?}",
            args.out.display(),
            result.embedding.tokens.join(" "),
            r.early_mean_loss,
            r.late_mean_loss,
            fmn_sd::train::scaffold::MEAN_WINDOW.min(r.steps - r.resumed_from),
            r.steps,
            result.images,
            r.seconds,
            result
                .norms
                .iter()
                .map(|n| (n * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        )
    });
    Ok(ExitCode::SUCCESS)
}
