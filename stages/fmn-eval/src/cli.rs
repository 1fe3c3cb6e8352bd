//! The `fmn-eval` command line: settings from `--config` (optional), overridden by flags.
use crate::judge::JudgeSpec;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fmn_cli::{OrtArgs, OutputArgs, StageArgs};
use fmn_core::Shard;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Judge before/after sample folders against a suite of concept prompts and write metrics
/// and an HTML report.
#[derive(Debug, Parser)]
#[command(name = "fmn-eval", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub ort: OrtArgs,
}

impl StageArgs for Cli {
    fn output(&self) -> &OutputArgs {
        &self.output
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Combine the report folders of `--shard I/N` runs into one report.
    Merge(MergeArgs),
    /// Judge any images (files, or the image files directly in folders): per image the
    /// verdicts and, for detectors, every kept box; totals per class.
    Judge(JudgeArgs),
}

/// `fmn-eval judge`: no manifest, no suite, no report folder.
#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// Image files, and folders whose image files (png, jpg, jpeg; not in sub-folders) are
    /// judged in name order.
    #[arg(required = true, value_name = "IMAGES_OR_DIRS")]
    pub inputs: Vec<PathBuf>,
    /// toy, onnx:PRESET.yaml or clip:DIR.
    #[arg(long)]
    pub judge: JudgeSpec,
    /// Also write the results as CSV: one row per kept box for detectors, one row per image
    /// for the other judges.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Detectors: the second column of totals counts the kept boxes scoring at least this.
    #[arg(
        long,
        value_name = "SCORE",
        default_value_t = crate::judge_images::DEFAULT_MIN_SCORE,
        value_parser = crate::judge_images::parse_score
    )]
    pub min_score: f64,
    /// `clip:` judges: a zero-shot label (repeat the flag; added to DIR/labels.txt).
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shards' report folders (all N of them).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// The merged report folder (replaced whole).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Options of an evaluation; each may also come from `--config FILE.yaml` (same names, with
/// underscores), the flags overriding it.
#[derive(Debug, Args, Default, Serialize)]
pub struct EvalArgs {
    /// YAML file with any of the options below.
    #[arg(long, value_name = "FILE.yaml")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The fmn-sample folder of the original model.
    #[arg(long)]
    pub before: Option<PathBuf>,
    /// The fmn-sample folder of the edited model (same prompts and seeds).
    #[arg(long)]
    pub after: Option<PathBuf>,
    /// The suite (configs/eval/*.yaml).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// toy, onnx:PRESET.yaml or clip:DIR.
    #[arg(long)]
    #[serde(serialize_with = "fmn_core::config::display")]
    pub judge: Option<JudgeSpec>,
    /// The report folder (replaced whole).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Evaluate only shard I of N (0-based) of the image pairs; combine with `fmn-eval merge`.
    #[arg(long)]
    #[serde(serialize_with = "fmn_core::config::display")]
    pub shard: Option<Shard>,
    /// The before folder's --save-attention file (default: BEFORE/attention.safetensors if
    /// present).
    #[arg(long)]
    pub before_attention: Option<PathBuf>,
    /// The after folder's --save-attention file (default: AFTER/attention.safetensors if
    /// present).
    #[arg(long)]
    pub after_attention: Option<PathBuf>,
    /// CLIP tokenizer folder for locating concept tokens (default: the before manifest's
    /// model folder's `tokenizer/`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// An fmn-attack folder on one of the suite's concepts (repeatable): its images are judged
    /// too, and the attack success rate is reported per concept.
    #[arg(long, value_name = "DIR")]
    pub attack: Option<Vec<PathBuf>>,
    #[command(flatten)]
    #[serde(skip)]
    pub memory: fmn_cli::MemoryArgs,
}

/// The settings keys (`--config FILE.yaml`, flags of the same names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub before: Option<PathBuf>,
    pub after: Option<PathBuf>,
    pub suite: Option<PathBuf>,
    pub judge: Option<String>,
    pub out: Option<PathBuf>,
    pub shard: Option<String>,
    pub before_attention: Option<PathBuf>,
    pub after_attention: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub attack: Vec<PathBuf>,
}

/// Every option resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub before: PathBuf,
    pub after: PathBuf,
    pub suite: PathBuf,
    pub judge: JudgeSpec,
    pub out: PathBuf,
    pub shard: Shard,
    pub before_attention: Option<PathBuf>,
    pub after_attention: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// fmn-attack folders.
    pub attack: Vec<PathBuf>,
    /// `--max-memory` (flag only).
    pub max_memory: Option<u64>,
}

impl EvalArgs {
    /// Defaults < `--config` < flags; missing required settings are named.
    pub fn settings(&self) -> Result<Settings> {
        let cfg: EvalConfig = fmn_core::merge(self.config.as_deref(), self)?;
        let need = |value: Option<PathBuf>, name: &str| {
            value.with_context(|| {
                format!("--{name} is required (as a flag or as `{name}:` in --config)")
            })
        };
        let judge = match &cfg.judge {
            Some(s) => s
                .parse()
                .map_err(|e: String| anyhow::anyhow!("`judge`: {e}"))?,
            None => anyhow::bail!("--judge is required (as a flag or as `judge:` in --config)"),
        };
        let shard = match &cfg.shard {
            Some(s) => s.parse().context("`shard`")?,
            None => Shard::ALL,
        };
        Ok(Settings {
            before: need(cfg.before, "before")?,
            after: need(cfg.after, "after")?,
            suite: need(cfg.suite, "suite")?,
            out: need(cfg.out, "out")?,
            judge,
            shard,
            before_attention: cfg.before_attention,
            after_attention: cfg.after_attention,
            tokenizer: cfg.tokenizer,
            attack: cfg.attack,
            max_memory: self.memory.max_memory,
        })
    }
}

/// Parses the command line and evaluates (or merges shards, or judges images).
pub fn run() -> Result<std::process::ExitCode> {
    crate::execute(&fmn_cli::parse::<Cli>())
}
