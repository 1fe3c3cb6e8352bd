//! The `fmn-eval` command line.
use crate::judge::JudgeSpec;
use clap::{Args, Parser, Subcommand};
use fmn_core::Shard;
use serde::Deserialize;
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
    /// Print metrics.json on stdout instead of one summary line per concept.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Log progress details on stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// The ONNX Runtime shared library for `--judge onnx:` (default: $ORT_DYLIB_PATH).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Combine the report folders of `--shard I/N` runs into one report.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shards' report folders (all N of them).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// The merged report folder (replaced whole).
    #[arg(long)]
    pub out: PathBuf,
}

/// Options of an evaluation; each may also come from `--config FILE.yaml` (same names, with
/// underscores), the flags overriding it.
#[derive(Debug, Args, Default)]
pub struct EvalArgs {
    /// YAML file with any of the options below.
    #[arg(long)]
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
    pub judge: Option<JudgeSpec>,
    /// The report folder (replaced whole).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Evaluate only shard I of N (0-based) of the image pairs; combine with `fmn-eval merge`.
    #[arg(long)]
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
}

/// `--config FILE.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

impl EvalArgs {
    /// The flags over the config file; missing required options are named.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        use anyhow::Context;
        let cfg: EvalConfig = match &self.config {
            Some(p) => fmn_core::load_yaml(p)?,
            None => EvalConfig::default(),
        };
        let need = |flag: Option<&PathBuf>, key: Option<PathBuf>, name: &str| {
            flag.cloned().or(key).with_context(|| {
                format!("--{name} is required (as a flag or as `{name}:` in --config)")
            })
        };
        let judge = match (&self.judge, &cfg.judge) {
            (Some(j), _) => j.clone(),
            (None, Some(s)) => s
                .parse()
                .map_err(|e: String| anyhow::anyhow!("config `judge`: {e}"))?,
            (None, None) => {
                anyhow::bail!("--judge is required (as a flag or as `judge:` in --config)")
            }
        };
        let shard = match (&self.shard, &cfg.shard) {
            (Some(s), _) => *s,
            (None, Some(s)) => s.parse().context("config `shard`")?,
            (None, None) => Shard::ALL,
        };
        Ok(Settings {
            before: need(self.before.as_ref(), cfg.before, "before")?,
            after: need(self.after.as_ref(), cfg.after, "after")?,
            suite: need(self.suite.as_ref(), cfg.suite, "suite")?,
            out: need(self.out.as_ref(), cfg.out, "out")?,
            judge,
            shard,
            before_attention: self.before_attention.clone().or(cfg.before_attention),
            after_attention: self.after_attention.clone().or(cfg.after_attention),
            tokenizer: self.tokenizer.clone().or(cfg.tokenizer),
        })
    }
}
