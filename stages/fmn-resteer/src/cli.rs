//! The `fmn-resteer` command line: settings from `--config` (optional), overridden by flags.
use crate::config::{ConceptKind, ConceptSpec, ParamSet, ResteerConfig};
use crate::{resteer, Model};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_cli::{switch, OutputArgs, SettingsArgs, StageArgs};
use fmn_sd::io::patch::{Concept, Patch};
use fmn_sd_args::{ModelArgs, TrainingRun, TrainingStageArgs};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Attention re-steering (Forget-Me-Not): fine-tune the UNet so that a concept's tokens get no
/// cross-attention, and write the change as a patch.
#[derive(Debug, Parser)]
#[command(name = "fmn-resteer", version)]
pub struct Args {
    #[command(flatten)]
    pub concept: ConceptArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub settings: SettingsArgs<SettingArgs>,
    /// The patch file to write.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub stage: TrainingStageArgs,
}

/// One concept from the command line (several concepts: the config's `multi_concept`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Concept")]
pub struct ConceptArgs {
    /// The concept to forget, as written in prompts.
    #[arg(long, requires_all = ["kind", "images"])]
    pub concept: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<ConceptKind>,
    /// Folder of the concept's images.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Folder of masks (NAME.png per image): the loss counts only pixels inside them.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Learned tokens for the concept (`fmn-invert` output, AUTOMATIC1111 or diffusers
    /// embedding): the prompts use them instead of the concept's name.
    #[arg(long, value_name = "FILE")]
    pub embedding: Option<PathBuf>,
}

/// The settings flags, each named after its config key (`fmn_core::config::merge`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Settings")]
pub struct SettingArgs {
    /// Training steps (`max_train_steps`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Learning rate (`learning_rate`).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Train only the cross-attention weights (`only_optimize_ca: true`).
    #[arg(long, overrides_with = "no_only_ca")]
    pub only_ca: bool,
    /// Train every UNet weight (`only_optimize_ca: false`).
    #[arg(long, overrides_with = "only_ca")]
    pub no_only_ca: bool,
    /// Which UNet weights to train (`params`; overrides --only-ca).
    #[arg(long, value_enum)]
    pub params: Option<ParamSet>,
    /// Also suppress attention on end-of-text positions (`use_pooler`).
    #[arg(long, overrides_with = "no_use_pooler")]
    pub use_pooler: bool,
    /// Do not suppress attention on end-of-text positions.
    #[arg(long, overrides_with = "use_pooler")]
    pub no_use_pooler: bool,
    /// With --embedding, also train on prompts with the concept's name (`also_name`).
    #[arg(long, overrides_with = "no_also_name")]
    pub also_name: bool,
    /// Train on the learned tokens' prompts only.
    #[arg(long, overrides_with = "also_name")]
    pub no_also_name: bool,
    /// Weight of the term moving the concept prompts' cross-attention keys/values onto those
    /// of the same prompts without the concept (`anchor_weight`; 0: off).
    #[arg(long)]
    pub anchor_weight: Option<f64>,
    /// What replaces the concept in the anchor prompts (`anchor`; default: nothing).
    #[arg(long)]
    pub anchor: Option<String>,
    /// Start from the exact minimiser of the anchor and preservation terms (`solve_anchor`).
    #[arg(long, overrides_with = "no_solve_anchor")]
    pub solve_anchor: bool,
    /// Start from the base weights, not the anchor solve.
    #[arg(long, overrides_with = "solve_anchor")]
    pub no_solve_anchor: bool,
    /// Train rank-r factors instead of full weights (`lora_rank`).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The flags as config keys; `None`: not given.
#[derive(Serialize)]
struct Overrides {
    multi_concept: Option<Vec<ConceptSpec>>,
    max_train_steps: Option<usize>,
    learning_rate: Option<f64>,
    only_optimize_ca: Option<bool>,
    params: Option<ParamSet>,
    use_pooler: Option<bool>,
    also_name: Option<bool>,
    anchor_weight: Option<f64>,
    anchor: Option<String>,
    solve_anchor: Option<bool>,
    lora_rank: Option<usize>,
    seed: Option<u64>,
}

impl StageArgs for Args {
    fn output(&self) -> &OutputArgs {
        &self.stage.output
    }
}

impl Args {
    /// The run's settings: defaults < `--config` < flags, checked.
    pub fn settings(&self) -> Result<ResteerConfig> {
        let c = &self.concept;
        let multi_concept = match (&c.concept, c.kind, &c.images) {
            (Some(name), Some(kind), Some(images)) => Some(vec![ConceptSpec {
                name: name.clone(),
                kind,
                images: images.clone(),
                masks: c.masks.clone(),
                embedding: c.embedding.clone(),
            }]),
            _ if c.masks.is_some() || c.embedding.is_some() => bail!(
                "--masks and --embedding go with --concept/--kind/--images; in a config, give `masks` and `embedding` per concept"
            ),
            _ => None,
        };
        let s = &self.settings.flags;
        let flags = Overrides {
            multi_concept,
            max_train_steps: s.steps,
            learning_rate: s.lr,
            only_optimize_ca: switch(s.only_ca, s.no_only_ca),
            params: s.params,
            use_pooler: switch(s.use_pooler, s.no_use_pooler),
            also_name: switch(s.also_name, s.no_also_name),
            anchor_weight: s.anchor_weight,
            anchor: s.anchor.clone(),
            solve_anchor: switch(s.solve_anchor, s.no_solve_anchor),
            lora_rank: s.lora_rank,
            seed: s.seed,
        };
        Ok(fmn_core::merge_valid(
            self.settings.config.as_deref(),
            &flags,
        )?)
    }
}

/// Parses the command line and runs the re-steering.
pub fn run() -> Result<ExitCode> {
    fmn_sd_args::run_stage(execute)
}

pub fn execute(args: &Args) -> Result<ExitCode> {
    let cfg = args.settings()?;
    let model_dir = args.model.path();
    let device = args.stage.device.device()?;
    let model = args.model.load(|source| Model::load(source, &device))?;
    let delta_dtype = if cfg.delta_dtype == "f32" {
        DType::F32
    } else {
        DType::F16
    };
    let run = TrainingRun::new(&args.stage, &args.out, cfg.max_train_steps, "re-steering");
    let result = resteer(&model, &cfg, &device, run.control())?;
    run.steps_done();
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
    let tensors = result.deltas.len();
    let patch = Patch::from_deltas(&result.base, result.deltas, concepts, settings, delta_dtype)?;
    patch
        .save(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    run.output_written();
    let r = &result.report;
    args.stage.output.report(
        &serde_json::json!({
            "patch": args.out.display().to_string(),
            "report": r,
            "tensors": tensors,
            "bytes": patch.size_bytes(),
            "base_fingerprint": patch.meta.base_fingerprint,
        }),
        || {
            format!(
                "wrote {} ({} tensors, {:.1} MB): loss {:.4} -> {:.4} in {} steps, {:.1} s",
                args.out.display(),
                tensors,
                patch.size_bytes() as f64 / 1e6,
                r.first_loss,
                r.final_loss,
                r.steps,
                r.seconds
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}
