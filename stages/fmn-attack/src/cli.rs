//! The `fmn-attack` command line: settings from `--config` (optional), overridden by flags.
use crate::attack::{self, AttackResult, RESULT_FILE};
use crate::config::{AttackConfig, Method};
use crate::report::{self, AttackReport, PatchRef, Reference, REPORT_FILE};
use crate::search::{BaseKv, KvDistance};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Parser;
use fmn_cli::{OutputArgs, SettingsArgs, StageArgs};
use fmn_core::Validate;
use fmn_inversion::config::{InvertConfig, Kind};
use fmn_judge::{Judge, JudgeSpec};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::scaffold::RunControl;
use fmn_sd_args::{ModelArgs, TrainingStageArgs};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Attack a forgetting: learn tokens that bring the concept back on the patched model
/// (concept inversion), sample them and judge the samples. Prints the attack success rate.
#[derive(Debug, Parser)]
#[command(name = "fmn-attack", version)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A patch applied to the model before the attack (repeatable); none: the attack is the
    /// baseline on the base model.
    #[arg(long, value_name = "FILE")]
    pub patch: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: SettingsArgs<SettingArgs>,
    /// The attack folder to write: `attack.json` and per attack `NAME/` (embedding, images).
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub stage: TrainingStageArgs,
}

/// The settings flags, each named after its config key.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Settings")]
pub struct SettingArgs {
    /// The forgotten concept's name (`concept`).
    #[arg(long)]
    pub concept: Option<String>,
    /// What the images show: picks the inversion's templates (`kind`).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Folder of the concept's images (`images`).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Folder of their masks (`masks`).
    #[arg(long, value_name = "DIR")]
    pub masks: Option<PathBuf>,
    /// Attack methods, e.g. inversion,search (`methods`).
    #[arg(long = "method", value_enum, value_delimiter = ',', num_args = 1..)]
    #[serde(rename = "methods")]
    pub methods: Option<Vec<Method>>,
    /// Numbers of learned tokens, e.g. 1,2,4 (`tokens`).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub tokens: Option<Vec<usize>>,
    /// Initialisers, e.g. random,word (`inits`).
    #[arg(long = "init", value_delimiter = ',', num_args = 1..)]
    #[serde(rename = "inits")]
    pub inits: Option<Vec<String>>,
    /// Seeds per (tokens, init) (`seeds`).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Inversion steps per attack (`steps`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The prompt search's sweeps over its word positions (`search_rounds`).
    #[arg(long)]
    pub search_rounds: Option<usize>,
    /// Words the search tries per position and sweep (`search_candidates`).
    #[arg(long)]
    pub search_candidates: Option<usize>,
    /// An fmn-invert config for the other inversion settings (`invert_config`).
    #[arg(long, value_name = "FILE.yaml")]
    pub invert_config: Option<PathBuf>,
    /// An attack prompt, `{}` for the learned tokens (repeatable; `prompts`).
    #[arg(long = "prompt")]
    #[serde(rename = "prompts")]
    pub prompts: Option<Vec<String>>,
    /// Images per prompt (`samples`).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Noise seed of image 0 (`sample_seed`).
    #[arg(long)]
    pub sample_seed: Option<u64>,
    /// Classifier-free guidance (`guidance`).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// The judge: toy, onnx:PRESET.yaml or clip:DIR (`judge`).
    #[arg(long)]
    pub judge: Option<String>,
    /// What counts as the concept, ATTRIBUTE=LABEL (repeatable; `expect`), e.g.
    /// character=bob.
    #[arg(long, value_name = "ATTRIBUTE=LABEL")]
    #[serde(serialize_with = "key_values")]
    pub expect: Option<Vec<String>>,
}

fn key_values<S: serde::Serializer>(v: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    let map: Option<BTreeMap<&str, &str>> = v.as_ref().map(|items| {
        items
            .iter()
            .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), "")))
            .collect()
    });
    map.serialize(s)
}

impl StageArgs for Args {
    fn output(&self) -> &OutputArgs {
        &self.stage.output
    }
}

/// Parses the command line and runs the attacks.
pub fn run() -> Result<ExitCode> {
    fmn_sd_args::run_stage(execute)
}

/// The judge and what it must see: `expect`, or with the toy judge the attribute whose
/// labels include the concept's name.
fn judge_and_expect(cfg: &mut AttackConfig) -> Result<Box<dyn Judge>> {
    let spec: JudgeSpec = cfg.judge.parse().map_err(anyhow::Error::msg)?;
    let judge = fmn_judge::load(&spec)?;
    if let Some((k, _)) = cfg
        .expect
        .iter()
        .find(|(k, v)| k.is_empty() || v.is_empty())
    {
        bail!("--expect {k}: write ATTRIBUTE=LABEL, e.g. character=bob");
    }
    if cfg.expect.is_empty() {
        let concept = cfg.concept().to_string();
        let found = ["character", "object", "style", "colour"]
            .into_iter()
            .map(|k| BTreeMap::from([(k.to_string(), concept.clone())]))
            .find(|e| judge.check_expect(e).is_ok());
        match found {
            Some(e) => cfg.expect = e,
            None => bail!(
                "the judge {} has no label \"{concept}\": say what it must see for an image to count as the concept, --expect ATTRIBUTE=LABEL (e.g. style=striped)",
                cfg.judge
            ),
        }
    }
    judge
        .check_expect(&cfg.expect)
        .map_err(|e| anyhow::anyhow!("`expect`: {e}"))?;
    Ok(judge)
}

/// The judge on the concept's images in `dir`; a warning when fewer than half show the
/// concept to it (images of something else, or a judge that cannot see this concept: the
/// ASR then means little).
fn judge_reference(cfg: &AttackConfig, judge: &dyn Judge, dir: &Path) -> Result<Reference> {
    let images = fmn_sd::train::images::TrainingImages::load(dir, None)
        .with_context(|| format!("cannot read the concept's images in {}", dir.display()))?;
    let pictures: Vec<_> = images.items.into_iter().map(|i| i.image).collect();
    let judged_concept = judge
        .judge(&pictures)
        .context("the judge failed on the concept's images")?
        .iter()
        .filter(|v| v.matches(&cfg.expect))
        .count();
    let rate = judged_concept as f64 / pictures.len().max(1) as f64;
    if rate < 0.5 {
        tracing::warn!(
            "the judge ({}) calls only {judged_concept} of the {} images in {} the concept ({}): \
             they may not show {} as a {:?}, or the judge cannot see it; the attack success rate \
             is measured against that",
            cfg.judge,
            pictures.len(),
            dir.display(),
            cfg.expect
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.concept(),
            cfg.kind
        );
    }
    Ok(Reference {
        images: pictures.len(),
        judged_concept,
        rate,
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

pub fn execute(args: &Args) -> Result<ExitCode> {
    let s = &args.settings;
    let mut cfg: AttackConfig = fmn_core::merge_valid(s.config.as_deref(), &s.flags)?;
    let judge = judge_and_expect(&mut cfg)?;
    let reference = match &cfg.images {
        Some(dir) => Some(judge_reference(&cfg, judge.as_ref(), dir)?),
        None => None,
    };
    let base_inversion: InvertConfig =
        fmn_core::merge(cfg.invert_config.as_deref(), &serde_json::Value::Null)?;
    let mut plan = cfg.plan();
    for p in plan.iter().filter(|p| p.method == Method::Inversion) {
        attack::inversion_settings(&cfg, &base_inversion, p)
            .validate()
            .map_err(|e| anyhow::anyhow!("attack {}: {e}", p.name))?;
    }
    let device = args.stage.device.device()?;
    let model_dir = args.model.path();
    let load_context = || format!("cannot load the model {}", model_dir.display());
    let source = args.model.open().with_context(load_context)?;
    let patches = args
        .patch
        .iter()
        .map(|p| Patch::load(p).with_context(|| format!("cannot load the patch {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    if plan.iter().any(|p| p.method == Method::Inversion) {
        fmn_sd_args::check_training_memory(
            &source,
            &fmn_sd_args::TrainingRequest {
                resolution: base_inversion.resolution,
                batch: base_inversion.train_batch_size,
                trainable_params: 0,
                text_encoder_in_graph: true,
                steps: true,
            },
            args.stage.device.memory.max_memory,
            "attack (inversion)",
        )?;
    }
    let guidance = fmn_sd::io::sampling_defaults::resolve_guidance(cfg.guidance, &model_dir)?;
    let side = source.default_image_side()?;
    fmn_sd_args::check_sampling_memory(
        &source,
        &fmn_sd_args::SamplingRequest {
            height: side,
            width: side,
            dtype: DType::F32,
            images: cfg.samples,
            guided: guidance > 1.0,
        },
        args.stage.device.memory.max_memory,
        "attack sampling",
    )?;
    let concept_prompts = crate::config::fill_prompts(&cfg.prompts, cfg.concept());
    let concept_prompts: Vec<&str> = concept_prompts.iter().map(String::as_str).collect();
    let searches = plan.iter().any(|p| p.method != Method::Inversion);
    if searches {
        fmn_sd_args::check_search_memory(
            &source,
            crate::search::prompts_per_pass(concept_prompts.len()),
            args.stage.device.memory.max_memory,
            "attack (prompt search)",
        )?;
    }
    let _lock = fmn_core::OutputLock::acquire(&args.out)?;
    // The search's target: the concept prompts' keys and values on the base model (loaded
    // for it alone, before the attacked model, when patches make them differ).
    let base_kv = if searches && !patches.is_empty() {
        let base = StableDiffusion::load_source(&source, &device, DType::F32, &[])
            .with_context(load_context)?;
        Some(BaseKv::new(&base, &concept_prompts).context("the prompt search's target")?)
    } else {
        None
    };
    let mut model = StableDiffusion::load_source(&source, &device, DType::F32, &patches)
        .with_context(|| {
            if args.patch.is_empty() {
                load_context()
            } else {
                format!(
                    "cannot apply the patches {} to the model {}",
                    args.patch
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    model_dir.display()
                )
            }
        })?;
    for p in plan.iter_mut().filter(|p| p.init == crate::config::NEAREST) {
        p.initializers = attack::nearest_tokens(&model, cfg.concept(), p.tokens)?
            .iter()
            .map(u32::to_string)
            .collect();
    }
    let search = if searches {
        let base_kv = match base_kv {
            Some(kv) => kv,
            None => BaseKv::new(&model, &concept_prompts).context("the prompt search's target")?,
        };
        Some((
            KvDistance::new(base_kv, &model)?,
            model.tokenizer.whole_words(cfg.concept())?,
        ))
    } else {
        None
    };
    if args.patch.is_empty() {
        tracing::warn!("no --patch: attacking the base model (the baseline the patched model is compared with)");
    }

    // Finished attacks live in OUT.ckpt/ until every attack is done; `--resume` reuses them
    // when the settings are the same.
    let work = fmn_cli::checkpoint_dir_for(&args.out);
    let patch_refs = args
        .patch
        .iter()
        .map(|p| {
            Ok(PatchRef {
                path: p.display().to_string(),
                sha256: sha256_file(p)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let settings = serde_json::json!({
        "attack": cfg,
        "inversion": base_inversion,
        "model": model_dir.display().to_string(),
        "patches": patch_refs.iter().map(|p| &p.sha256).collect::<Vec<_>>(),
    });
    let settings_file = work.join("settings.json");
    let same = std::fs::read(&settings_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|old| old == settings);
    if work.exists() && !(args.stage.run.resume && same) {
        if args.stage.run.resume {
            tracing::warn!("{}: other settings; starting over", work.display());
        }
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fmn_core::write_json_atomic(&settings_file, &settings)
        .with_context(|| format!("cannot write {}", settings_file.display()))?;

    let bar = args
        .stage
        .output
        .bar((plan.len() * cfg.steps) as u64, "attacking");
    let mut results: Vec<AttackResult> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let dir = work.join(&p.name);
        let done = std::fs::read(dir.join(RESULT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<AttackResult>(&b).ok());
        if let Some(r) = done {
            tracing::info!(
                "{}: finished earlier ({:.1} % judged the concept)",
                p.name,
                100.0 * r.rate
            );
            results.push(r);
            continue;
        }
        let offset = (i * cfg.steps) as u64;
        let bar_ref = &bar;
        let r = match (p.method, &search) {
            (Method::Search | Method::Words, Some((distance, pool))) => {
                let per_sweep = cfg.steps as f64 / cfg.search_rounds as f64;
                let on_sweep = move |sweep: usize| {
                    bar_ref.set_position(offset + ((sweep + 1) as f64 * per_sweep) as u64);
                };
                attack::run_search(
                    &model,
                    &cfg,
                    distance,
                    pool,
                    p,
                    judge.as_ref(),
                    guidance,
                    &dir,
                    on_sweep,
                    &device,
                )?
            }
            (Method::Search | Method::Words, None) => {
                bail!("attack {}: no search target", p.name)
            }
            (Method::Inversion, _) => {
                let ckpt = work.join(format!("{}.ckpt", p.name));
                let control = RunControl {
                    checkpoint_dir: Some(ckpt.clone()),
                    checkpoint_every: match args.stage.run.checkpoint_every {
                        0 => 100,
                        n => n,
                    },
                    resume: true,
                    on_step: Box::new(move |r| {
                        bar_ref.set_position(offset + r.step as u64 + 1);
                        bar_ref.set_message(format!("loss {:.4}", r.loss));
                    }),
                };
                let r = attack::run(
                    &mut model,
                    &cfg,
                    &base_inversion,
                    p,
                    judge.as_ref(),
                    guidance,
                    &dir,
                    control,
                    &device,
                )?;
                let _ = std::fs::remove_dir_all(&ckpt);
                r
            }
        };
        tracing::info!(
            "{}: {}/{} images judged the concept",
            p.name,
            r.judged_concept,
            r.images.len()
        );
        results.push(r);
    }
    bar.finish_and_clear();

    let (asr, strongest, chance) = report::rates(&results);
    let doc = AttackReport {
        fmn_version: fmn_core::VERSION.into(),
        model: model_dir.display().to_string(),
        patches: patch_refs,
        baseline: args.patch.is_empty(),
        concept: cfg.concept().to_string(),
        judge: cfg.judge.clone(),
        expect: cfg.expect.clone(),
        settings,
        attacks: results,
        asr,
        strongest,
        chance,
        reference,
    };
    let staging = fmn_core::StagingDir::new(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for a in &doc.attacks {
        let from = work.join(&a.name);
        std::fs::rename(&from, staging.path().join(&a.name))
            .with_context(|| format!("cannot move {}", from.display()))?;
    }
    fmn_core::write_json_atomic(&staging.path().join(REPORT_FILE), &doc)?;
    staging
        .commit_replace()
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let _ = std::fs::remove_dir_all(&work);

    let json = serde_json::to_value(&doc)?;
    let attacks: Vec<&AttackResult> = doc
        .attacks
        .iter()
        .filter(|a| a.method != Method::Words.name())
        .collect();
    args.stage.output.report(&json, || {
        format!(
            "{}{}: ASR {:.1} % over {} attack(s) ({} images); strongest {} {:.1} %{}{}; wrote {}",
            doc.concept,
            if doc.baseline {
                " (baseline: no patch)"
            } else {
                ""
            },
            100.0 * doc.asr,
            attacks.len(),
            attacks.iter().map(|a| a.images.len()).sum::<usize>(),
            doc.strongest.name,
            100.0 * doc.strongest.rate,
            doc.chance.map_or(String::new(), |c| format!(
                "; random words (chance) {:.1} %",
                100.0 * c
            )),
            doc.reference.as_ref().map_or(String::new(), |r| format!(
                "; the judge sees it in {}/{} of the concept's own images",
                r.judged_concept, r.images
            )),
            args.out.join(REPORT_FILE).display()
        )
    });
    Ok(ExitCode::SUCCESS)
}
