//! The `fmn-resteer` command line: settings from `--config` (optional), overridden by flags.
use crate::config::{ConceptKind, ConceptSpec, ParamSet, ResteerConfig, StepObjective};
use crate::preserve::GramCache;
use crate::{resteer, Model};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_cli::{switch, OutputArgs, SettingsArgs, StageArgs};
use fmn_sd::io::patch::{Concept, Patch};
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::scaffold::RunControl;
use fmn_sd_args::{ModelArgs, TrainingRun, TrainingStageArgs};
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// Built-in settings to start from (`original`: the paper's; `toy`: the earlier toy-world
    /// preset; `robust`: fmn's method and denoising steps against textual-inversion attacks);
    /// `--config` and flags override them. Default: fmn's method.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    #[command(flatten)]
    pub settings: SettingsArgs<SettingArgs>,
    /// Where the preserved prompts' statistics are cached (default: $FMN_CACHE_DIR, else
    /// $XDG_CACHE_HOME/fmn, else ~/.cache/fmn).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The patch file to write.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub stage: TrainingStageArgs,
}

/// The built-in presets (`configs/resteer/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The original Forget-Me-Not settings (its attn.yaml): the whole UNet, lr 2e-6, 35 steps.
    Original,
    /// fmn's earlier toy-world preset, with its hand-written preserve list.
    Toy,
    /// fmn's method, then 200 `loss: denoise` steps of the whole UNet (needs the images).
    Robust,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Original => "original",
            Preset::Toy => "toy",
            Preset::Robust => "robust",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Preset::Original => include_str!("../../../configs/resteer/original.yaml"),
            Preset::Toy => include_str!("../../../configs/resteer/toy.yaml"),
            Preset::Robust => include_str!("../../../configs/resteer/robust.yaml"),
        }
    }
}

/// One concept from the command line (several concepts: the config's `multi_concept`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Concept")]
pub struct ConceptArgs {
    /// The concept to forget, as written in prompts.
    #[arg(long, requires = "kind")]
    pub concept: Option<String>,
    #[arg(long, value_enum)]
    pub kind: Option<ConceptKind>,
    /// Folder of the concept's images (not needed with --steps 0).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Folder of masks (NAME.png per image): the loss counts only pixels inside them.
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Learned tokens for the concept (`fmn-invert` output, AUTOMATIC1111 or diffusers
    /// embedding): the prompts use them instead of the concept's name.
    #[arg(long, value_name = "FILE")]
    pub embedding: Option<PathBuf>,
    /// Learned tokens that bring the concept back (e.g. an `fmn-attack` embedding): forgotten
    /// with it (`adversarial`; repeatable).
    #[arg(long, value_name = "FILE")]
    pub adversarial: Vec<PathBuf>,
}

/// The settings flags, each named after its config key (`fmn_core::config::merge`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Settings")]
pub struct SettingArgs {
    /// Training steps after the solve (`max_train_steps`; 0, the default: the solve alone, no images read).
    #[arg(long)]
    pub steps: Option<usize>,
    /// What the steps minimise (`loss`): the attention on the concept's tokens, or its
    /// images' noise predictions moved onto the anchor's (`denoise`).
    #[arg(long, value_enum)]
    pub loss: Option<StepObjective>,
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
    /// Anchor an object onto a sibling from the preserved list ("a red square" → "a red
    /// triangle") where --anchor is not given (`sibling_anchor`, the default).
    #[arg(long, overrides_with = "no_sibling_anchor")]
    pub sibling_anchor: bool,
    /// Anchor objects onto the prompt without them ("a red square" → "a red").
    #[arg(long, overrides_with = "sibling_anchor")]
    pub no_sibling_anchor: bool,
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
    /// Also preserve the prompts of this list file (`preserve_files`; format:
    /// configs/preserve/README.md); repeatable.
    #[arg(long, value_name = "FILE")]
    pub preserve: Vec<PathBuf>,
    /// Preserve nothing (`preserve: false`): no preservation term in the solve or the steps.
    #[arg(long)]
    pub no_preserve: bool,
    /// Rounds of attack-then-forget after the solve (`harden`): tokens learned on the patched
    /// model from the concept's images are forgotten with it.
    #[arg(long, value_name = "N")]
    pub harden: Option<usize>,
    /// Inversion steps of each hardening attack (`harden_steps`).
    #[arg(long, value_name = "N")]
    pub harden_steps: Option<usize>,
    /// With `--loss denoise`: attack steps per training step of an attacker inside the run,
    /// whose tokens are erased with the concept (`adversary_steps`; AdvUnlearn).
    #[arg(long, value_name = "N")]
    pub adversary_steps: Option<usize>,
}

/// The flags as config keys; `None`: not given.
#[derive(Serialize)]
struct Overrides {
    multi_concept: Option<Vec<ConceptSpec>>,
    max_train_steps: Option<usize>,
    loss: Option<StepObjective>,
    learning_rate: Option<f64>,
    only_optimize_ca: Option<bool>,
    params: Option<ParamSet>,
    use_pooler: Option<bool>,
    also_name: Option<bool>,
    anchor_weight: Option<f64>,
    anchor: Option<String>,
    sibling_anchor: Option<bool>,
    solve_anchor: Option<bool>,
    lora_rank: Option<usize>,
    seed: Option<u64>,
    preserve: Option<bool>,
    preserve_files: Option<Vec<PathBuf>>,
    harden: Option<usize>,
    harden_steps: Option<usize>,
    adversary_steps: Option<usize>,
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
        let multi_concept = match (&c.concept, c.kind) {
            (Some(name), Some(kind)) => Some(vec![ConceptSpec {
                name: name.clone(),
                kind,
                images: c.images.clone(),
                masks: c.masks.clone(),
                embedding: c.embedding.clone(),
                adversarial: c.adversarial.clone(),
            }]),
            _ if c.images.is_some()
                || c.masks.is_some()
                || c.embedding.is_some()
                || !c.adversarial.is_empty() =>
            {
                bail!(
                "--images, --masks, --embedding and --adversarial go with --concept/--kind; in a config, give `images`, `masks`, `embedding` and `adversarial` per concept"
            )
            }
            _ => None,
        };
        let s = &self.settings.flags;
        let flags = Overrides {
            multi_concept,
            max_train_steps: s.steps,
            loss: s.loss,
            learning_rate: s.lr,
            only_optimize_ca: switch(s.only_ca, s.no_only_ca),
            params: s.params,
            use_pooler: switch(s.use_pooler, s.no_use_pooler),
            also_name: switch(s.also_name, s.no_also_name),
            anchor_weight: s.anchor_weight,
            anchor: s.anchor.clone(),
            sibling_anchor: switch(s.sibling_anchor, s.no_sibling_anchor),
            solve_anchor: switch(s.solve_anchor, s.no_solve_anchor),
            lora_rank: s.lora_rank,
            seed: s.seed,
            preserve: s.no_preserve.then_some(false),
            preserve_files: (!s.preserve.is_empty()).then(|| s.preserve.clone()),
            harden: s.harden,
            harden_steps: s.harden_steps,
            adversary_steps: s.adversary_steps,
        };
        let file = &self.settings.config;
        let text = file
            .as_deref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))
            })
            .transpose()?;
        let preset_name = self
            .preset
            .map(|p| PathBuf::from(format!("preset {}", p.name())));
        let mut layers: Vec<(&Path, &str)> = Vec::new();
        if let (Some(p), Some(name)) = (self.preset, &preset_name) {
            layers.push((name, p.text()));
        }
        if let (Some(f), Some(t)) = (file, &text) {
            layers.push((f, t));
        }
        Ok(fmn_core::merge_valid_layers(&layers, &flags)?)
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
    let load_context = || format!("cannot load the model {}", model_dir.display());
    let source = args.model.open().with_context(load_context)?;
    let set = cfg.param_set();
    // Each step holds one UNet graph per concept until its backward pass, two with
    // `loss: denoise` (the concept's prompt and a preserved one).
    let graphs = match cfg.loss {
        StepObjective::Attention => 1,
        StepObjective::Denoise => 2,
    } * cfg.multi_concept.len().max(1);
    let request = fmn_sd_args::TrainingRequest {
        resolution: cfg.resolution,
        batch: cfg.train_batch_size * graphs,
        trainable_params: source
            .parameter_count_where("unet", |name| crate::params::selected(set, name))
            .with_context(load_context)?,
        // Hardening inverts tokens through the text encoder.
        text_encoder_in_graph: cfg.harden > 0,
        steps: cfg.max_train_steps > 0 || cfg.harden > 0,
    };
    fmn_sd_args::check_training_memory(
        &source,
        &request,
        args.stage.device.memory.max_memory,
        "re-steering",
    )?;
    let run = TrainingRun::new(&args.stage, &args.out, cfg.max_train_steps, "re-steering")?;
    let model = Model::load(&source, &device, &cfg).with_context(load_context)?;
    let delta_dtype = if cfg.delta_dtype == "f32" {
        DType::F32
    } else {
        DType::F16
    };
    let cache = args
        .cache_dir
        .clone()
        .or_else(GramCache::default_dir)
        .map(GramCache::new);
    let mut result = resteer(&model, &cfg, &device, run.control(), cache.as_ref())?;
    run.steps_done();
    let concepts: Vec<Concept> = cfg
        .multi_concept
        .iter()
        .map(|c| Concept {
            name: c.name.clone(),
            kind: c.kind.as_str().into(),
        })
        .collect();
    let mut settings = serde_json::to_value(&cfg)?;
    settings["model"] = serde_json::json!(model_dir.display().to_string());
    let mut hardening = Vec::new();
    if cfg.harden > 0 {
        let dir = fmn_cli::checkpoint_dir_for(&args.out).join("harden");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut hardened = cfg.clone();
        for round in 1..=cfg.harden {
            let patch = Patch::from_deltas(
                &result.base,
                result.deltas.clone(),
                concepts.clone(),
                settings.clone(),
                DType::F32,
            )?;
            let patched = StableDiffusion::load_source(&source, &device, DType::F32, &[patch])
                .with_context(load_context)?;
            for (ci, path, attack) in
                crate::harden::attack_round(&patched, &hardened, round, &dir, &device)?
            {
                hardened.multi_concept[ci].adversarial.push(path);
                hardening.push(attack);
            }
            drop(patched);
            result = resteer(
                &model,
                &hardened,
                &device,
                RunControl::silent(),
                cache.as_ref(),
            )?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        // The checkpoint folder too, if hardening was all it held.
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
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
            "preserved": result.preserved,
            "concepts": result.concepts,
            "hardening": hardening,
        }),
        || {
            let done = if r.steps == 0 {
                "solved, no steps".to_string()
            } else {
                format!(
                    "loss {:.4} -> {:.4} in {} steps",
                    r.first_loss, r.final_loss, r.steps
                )
            };
            format!(
                "wrote {} ({} tensors, {:.1} MB): {done}, {:.1} s",
                args.out.display(),
                tensors,
                patch.size_bytes() as f64 / 1e6,
                r.seconds
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}
