//! The `fmn-resteer` command line: a YAML config (optional) overridden by flags.
use crate::config::{ConceptKind, ConceptSpec, ParamSet, ResteerConfig};
use crate::{resteer, Model, RunOptions};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_sd::io::patch::{Concept, Patch};
use std::path::PathBuf;
use std::process::ExitCode;

/// Attention re-steering (Forget-Me-Not): fine-tune the UNet so that a concept's tokens get no
/// cross-attention, and write the change as a patch.
#[derive(Debug, Parser)]
#[command(name = "fmn-resteer", version)]
pub struct Args {
    #[command(flatten)]
    pub model: fmn_sd_args::ModelArgs,
    /// Settings (keys as in configs/resteer/*.yaml); the flags below override them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The concept to forget, as written in prompts (several concepts: the config's
    /// `multi_concept`).
    #[arg(long, requires_all = ["kind", "images"])]
    pub concept: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<ConceptKind>,
    /// Folder of the concept's images.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Folder of masks (NAME.png per image): the loss counts only pixels inside them.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Learned tokens for the concept (`fmn-invert` output, AUTOMATIC1111 or diffusers
    /// embedding): the prompts use them instead of the concept's name.
    #[arg(long)]
    pub embedding: Option<PathBuf>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Train only the cross-attention weights (`only_optimize_ca: true`).
    #[arg(long)]
    pub only_ca: bool,
    /// Which UNet weights to train (overrides --only-ca).
    #[arg(long, value_enum)]
    pub params: Option<ParamSet>,
    /// Also suppress attention on end-of-text positions.
    #[arg(long)]
    pub use_pooler: bool,
    /// With --embedding, also train on prompts with the concept's name (`also_name: true`).
    #[arg(long)]
    pub also_name: bool,
    /// Weight of the term moving the concept prompts' cross-attention keys/values onto those
    /// of the same prompts without the concept (`anchor_weight`; 0: off).
    #[arg(long)]
    pub anchor_weight: Option<f64>,
    /// What replaces the concept in the anchor prompts (`anchor`; default: nothing).
    #[arg(long)]
    pub anchor: Option<String>,
    /// Start from the exact minimiser of the anchor and preservation terms (`solve_anchor`).
    #[arg(long)]
    pub solve_anchor: bool,
    /// Train rank-r factors instead of full weights.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the checkpoint every N steps to OUT.ckpt/ (removed when the patch is written).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from OUT.ckpt/ if a checkpoint is there.
    #[arg(long)]
    pub resume: bool,
    /// The patch file to write.
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
    pub fn settings(&self) -> Result<ResteerConfig> {
        let mut cfg = match &self.config {
            Some(path) => fmn_core::load_yaml::<ResteerConfig>(path)?,
            None => ResteerConfig::default(),
        };
        if let (Some(name), Some(kind), Some(images)) = (&self.concept, self.kind, &self.images) {
            cfg.multi_concept = vec![ConceptSpec {
                name: name.clone(),
                kind,
                images: images.clone(),
                masks: self.masks.clone(),
                embedding: self.embedding.clone(),
            }];
        } else if self.masks.is_some() || self.embedding.is_some() {
            bail!("--masks and --embedding go with --concept/--kind/--images; in a config, give `masks` and `embedding` per concept");
        }
        if let Some(v) = self.steps {
            cfg.max_train_steps = v;
        }
        if let Some(v) = self.lr {
            cfg.learning_rate = v;
        }
        if self.only_ca {
            cfg.only_optimize_ca = true;
        }
        if self.params.is_some() {
            cfg.params = self.params;
        }
        if self.use_pooler {
            cfg.use_pooler = true;
        }
        if self.also_name {
            cfg.also_name = true;
        }
        if let Some(v) = self.anchor_weight {
            cfg.anchor_weight = v;
        }
        if let Some(v) = &self.anchor {
            cfg.anchor = v.clone();
        }
        if self.solve_anchor {
            cfg.solve_anchor = true;
        }
        if self.lora_rank.is_some() {
            cfg.lora_rank = self.lora_rank;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
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
        .and_then(|source| Model::load(&source, &device))
        .with_context(|| format!("cannot load the model {}", model_dir.display()))?;
    let delta_dtype = if cfg.delta_dtype == "f32" {
        DType::F32
    } else {
        DType::F16
    };
    let ckpt = fmn_sd::train::checkpoint::folder_for(&args.out);
    let bar = fmn_core::progress::bar(cfg.max_train_steps as u64, "re-steering", args.quiet);
    let mut on_step = |step: usize, loss: f64| {
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("loss {loss:.4}"));
        tracing::debug!(step, loss);
    };
    let result = resteer(
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
    let concepts = cfg
        .multi_concept
        .iter()
        .map(|c| Concept {
            name: c.name.clone(),
            kind: c.kind.as_str().into(),
        })
        .collect();
    let mut settings = serde_json::to_value(&cfg)?;
    settings["model"] = serde_json::json!(model_dir.display().to_string());
    let patch = Patch::from_deltas(&result.base, result.deltas, concepts, settings, delta_dtype)?;
    patch
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if args.checkpoint_every > 0 || args.resume {
        fmn_sd::train::checkpoint::Checkpoint::new(&ckpt, serde_json::Value::Null).remove();
    }
    let r = &result.report;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "patch": args.out.display().to_string(),
                "report": r,
                "bytes": patch.size_bytes(),
                "base_fingerprint": patch.meta.base_fingerprint,
            })
        );
    } else if !args.quiet {
        eprintln!(
            "wrote {} ({} tensors, {:.1} MB): loss {:.4} -> {:.4} in {} steps, {:.1} s",
            args.out.display(),
            r.tensors,
            patch.size_bytes() as f64 / 1e6,
            r.first_loss,
            r.final_loss,
            r.steps,
            r.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
