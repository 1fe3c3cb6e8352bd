//! The `fmn-invert` command line: a YAML config (optional) overridden by flags.
use crate::config::{split_tokens, InvertConfig, Kind, TokenList};
use crate::{invert, RunOptions};
use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_sd::io::embedding::EmbeddingLayout;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::checkpoint::{folder_for, Checkpoint};
use std::path::PathBuf;
use std::process::ExitCode;

/// Textual inversion: learn new tokens that stand for the concept in a few images.
#[derive(Debug, Parser)]
#[command(name = "fmn-invert", version)]
pub struct Args {
    #[command(flatten)]
    pub model: fmn_sd_args::ModelArgs,
    /// Settings (keys as in configs/invert/*.yaml); the flags below override them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder of the concept's images.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Folder of masks (NAME.png per image): the loss is weighted toward the concept.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// The new tokens, e.g. "<s1> <s2>" (or "<s1>|<s2>").
    #[arg(long)]
    pub tokens: Option<String>,
    /// Initialisers, one per token or one for all, separated by `|`: a one-token word,
    /// <rand-σ> or <zero>.
    #[arg(long)]
    pub init: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training resolution in pixels.
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Write AUTOMATIC1111's layout (`emb_params`; invoked by the file name) instead of one
    /// tensor per token.
    #[arg(long)]
    pub a1111: bool,
    /// Write the checkpoint every N steps to OUT.ckpt/ (removed when the embedding is written).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from OUT.ckpt/ if a checkpoint is there.
    #[arg(long)]
    pub resume: bool,
    /// The embedding file to write (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, or cuda / cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, short)]
    pub verbose: bool,
}

impl Args {
    pub fn settings(&self) -> Result<InvertConfig> {
        let mut cfg = match &self.config {
            Some(path) => fmn_core::load_yaml::<InvertConfig>(path)?,
            None => InvertConfig::default(),
        };
        if let Some(v) = &self.images {
            cfg.instance_data_dir = Some(v.clone());
        }
        if let Some(v) = &self.masks {
            cfg.mask_dir = Some(v.clone());
        }
        if let Some(v) = &self.tokens {
            cfg.placeholder_tokens = TokenList::List(split_tokens(v));
        }
        if let Some(v) = &self.init {
            cfg.initializer_tokens = TokenList::List(
                v.split('|')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        if let Some(v) = self.kind {
            cfg.use_template = v;
        }
        if let Some(v) = self.steps {
            cfg.max_train_steps_ti = v;
        }
        if let Some(v) = self.lr {
            cfg.learning_rate_ti = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if self.resolution.is_some() {
            cfg.resolution = self.resolution;
        }
        cfg.validate()
            .map_err(anyhow::Error::msg)
            .with_context(|| match &self.config {
                Some(p) => format!("settings from {}", p.display()),
                None => "settings".into(),
            })?;
        Ok(cfg)
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let cfg = args.settings()?;
    let model_dir = args.model.path();
    let device = fmn_sd::device::from_name(&args.device)?;
    let model = args
        .model
        .open()
        .and_then(|source| StableDiffusion::load_source(&source, &device, DType::F32, &[]))
        .with_context(|| format!("cannot load the model {}", model_dir.display()))?;
    let ckpt = folder_for(&args.out);
    let bar = fmn_core::progress::bar(cfg.max_train_steps_ti as u64, "inverting", args.quiet);
    let mut on_step = |step: usize, loss: f64| {
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("loss {loss:.4}"));
        tracing::debug!(step, loss);
    };
    let result = invert(
        &model,
        &cfg,
        &device,
        RunOptions {
            checkpoint_dir: (args.checkpoint_every > 0 || args.resume).then_some(ckpt.as_path()),
            checkpoint_every: args.checkpoint_every,
            resume: args.resume,
            on_step: &mut on_step,
        },
    )?;
    bar.finish_and_clear();
    let layout = if args.a1111 {
        EmbeddingLayout::A1111
    } else {
        EmbeddingLayout::Fmn
    };
    result
        .embedding
        .save(&args.out, layout)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if args.checkpoint_every > 0 || args.resume {
        Checkpoint::new(&ckpt, serde_json::Value::Null).remove();
    }
    let r = &result.report;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "embedding": args.out.display().to_string(),
                "tokens": result.embedding.tokens,
                "report": r,
            })
        );
    } else if !args.quiet {
        eprintln!(
            "wrote {} ({}): loss {:.4} -> {:.4} in {} steps on {} images, {:.1} s; norms {:?}",
            args.out.display(),
            result.embedding.tokens.join(" "),
            r.first_loss,
            r.final_loss,
            r.steps,
            r.images,
            r.seconds,
            r.norms
                .iter()
                .map(|n| (n * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(ExitCode::SUCCESS)
}
