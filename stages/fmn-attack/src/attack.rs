//! One attack: textual inversion on the (patched) model from the concept's images, the learned
//! tokens sampled on the attack prompts, every image judged.
use crate::config::{AttackConfig, Method, Planned};
use crate::search::{self, KvDistance, SearchSettings};
use anyhow::{Context, Result};
use candle_core::Device;
use fmn_inversion::config::{InvertConfig, TokenList};
use fmn_judge::Judge;
use fmn_sd::io::embedding::{EmbeddingLayout, TokenEmbedding};
use fmn_sd::sample::pipeline::{seeded_noise, to_rgb_image, SampleRequest, StableDiffusion};
use fmn_sd::train::scaffold::RunControl;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The result file of a finished attack inside its folder (written last).
pub const RESULT_FILE: &str = "result.json";
pub const EMBEDDING_FILE: &str = "embedding.safetensors";
/// The prompt search's words, start and distances ([`search::Found`]).
pub const SEARCH_FILE: &str = "search.json";

/// One attack image and the judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedImage {
    /// Relative to the attack's folder.
    pub file: String,
    pub prompt: String,
    pub seed: u64,
    /// Whether the judge saw the concept (every `expect` label).
    pub concept: bool,
    pub labels: BTreeMap<String, Option<String>>,
}

/// A finished attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackResult {
    pub name: String,
    /// `inversion` or `search`.
    pub method: String,
    pub tokens: usize,
    pub init: String,
    /// What the inversion started from (per token, or one for all); the search's random
    /// start words.
    pub initializers: Vec<String>,
    pub seed: u64,
    /// Inversion steps; the search's sweeps.
    pub steps: usize,
    /// The learned tokens (or the words found) as the prompts use them.
    pub token_text: String,
    /// Mean inversion loss of the last steps; the search's K/V distance of the words found.
    pub final_loss: f64,
    pub seconds: f64,
    pub images: Vec<JudgedImage>,
    /// Images judged the concept, of all.
    pub judged_concept: usize,
    pub rate: f64,
}

/// The inversion settings of `plan`: `base` (fmn-invert's, or the attack's `invert_config`)
/// with the attack's images, kind, tokens, initialiser, steps and seed.
pub fn inversion_settings(cfg: &AttackConfig, base: &InvertConfig, plan: &Planned) -> InvertConfig {
    let mut inv = base.clone();
    inv.instance_data_dir = cfg.images.clone();
    inv.mask_dir = cfg.masks.clone();
    inv.use_template = cfg.kind;
    inv.placeholder_tokens = TokenList::List(
        (1..=plan.tokens)
            .map(|i| format!("<{}-{i}>", plan.name))
            .collect(),
    );
    inv.initializer_tokens = TokenList::List(plan.initializers.clone());
    inv.max_train_steps_ti = cfg.steps;
    inv.seed = plan.seed;
    inv
}

/// Runs the inversion `plan` into `dir` (created; the result file last) and returns its
/// result.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &mut StableDiffusion,
    cfg: &AttackConfig,
    base: &InvertConfig,
    plan: &Planned,
    judge: &dyn Judge,
    guidance: f64,
    dir: &Path,
    control: RunControl,
    device: &Device,
) -> Result<AttackResult> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let inv = inversion_settings(cfg, base, plan);
    let inverted = fmn_inversion::invert(model, &inv, device, control)
        .with_context(|| format!("attack {}: the inversion failed", plan.name))?;
    save_embedding(&inverted.embedding, dir)?;
    let token_text = inverted.embedding.tokens.join(" ");

    let base_tokenizer = model.tokenizer.clone();
    model.add_embeddings(vec![inverted.embedding], std::slice::from_ref(&plan.name))?;
    let judged = sample_and_judge(model, cfg, &token_text, judge, guidance, dir, device);
    model.tokenizer = base_tokenizer;
    model.added_tokens = None;
    let images = judged.with_context(|| format!("attack {}", plan.name))?;
    finish(
        plan,
        Outcome {
            method: Method::Inversion,
            initializers: plan.initializers.clone(),
            steps: cfg.steps,
            token_text,
            final_loss: inverted.report.late_mean_loss,
        },
        images,
        started,
        dir,
    )
}

/// Runs the prompt search `plan` into `dir` (created; the result file last): the words found
/// by [`search::search`] sampled on the attack prompts and judged. The `words` control is the
/// same with no sweep: the search's random start.
#[allow(clippy::too_many_arguments)]
pub fn run_search(
    model: &StableDiffusion,
    cfg: &AttackConfig,
    distance: &KvDistance,
    pool: &[String],
    plan: &Planned,
    judge: &dyn Judge,
    guidance: f64,
    dir: &Path,
    on_sweep: impl FnMut(usize),
    device: &Device,
) -> Result<AttackResult> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let settings = SearchSettings {
        tokens: plan.tokens,
        rounds: match plan.method {
            Method::Words => 0,
            _ => cfg.search_rounds,
        },
        candidates: cfg.search_candidates,
        seed: plan.seed,
    };
    let found = search::search(model, distance, &cfg.prompts, pool, &settings, on_sweep)
        .with_context(|| format!("attack {}: the prompt search failed", plan.name))?;
    let path = dir.join(SEARCH_FILE);
    fmn_core::write_json_atomic(&path, &found)
        .with_context(|| format!("cannot write {}", path.display()))?;
    save_embedding(
        &search::words_embedding(model, &plan.name, &found.words, &settings)?,
        dir,
    )?;
    let token_text = found.words.join(" ");
    let images = sample_and_judge(model, cfg, &token_text, judge, guidance, dir, device)
        .with_context(|| format!("attack {}", plan.name))?;
    finish(
        plan,
        Outcome {
            method: plan.method,
            initializers: found.start.clone(),
            steps: settings.rounds,
            token_text,
            final_loss: found.distance,
        },
        images,
        started,
        dir,
    )
}

/// `embedding` as `dir/embedding.safetensors` (fmn layout; written whole or not at all).
fn save_embedding(embedding: &TokenEmbedding, dir: &Path) -> Result<()> {
    let path = dir.join(EMBEDDING_FILE);
    let tmp = dir.join(format!(".{EMBEDDING_FILE}.tmp"));
    embedding
        .save(&tmp, EmbeddingLayout::Fmn)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// What an attack found, before its images are judged.
struct Outcome {
    method: Method,
    initializers: Vec<String>,
    steps: usize,
    token_text: String,
    final_loss: f64,
}

/// The result of `plan`: its `outcome`, its judged `images`, their rate and the time since
/// `started`, written to `dir`.
fn finish(
    plan: &Planned,
    outcome: Outcome,
    images: Vec<JudgedImage>,
    started: std::time::Instant,
    dir: &Path,
) -> Result<AttackResult> {
    let judged_concept = images.iter().filter(|i| i.concept).count();
    let result = AttackResult {
        name: plan.name.clone(),
        method: outcome.method.name().into(),
        tokens: plan.tokens,
        init: plan.init.clone(),
        initializers: outcome.initializers,
        seed: plan.seed,
        steps: outcome.steps,
        token_text: outcome.token_text,
        final_loss: outcome.final_loss,
        seconds: started.elapsed().as_secs_f64(),
        rate: judged_concept as f64 / images.len().max(1) as f64,
        judged_concept,
        images,
    };
    fmn_core::write_json_atomic(&dir.join(RESULT_FILE), &result)
        .with_context(|| format!("cannot write {}", dir.join(RESULT_FILE).display()))?;
    Ok(result)
}

/// Every attack prompt with `token_text`, sampled into `dir` and judged.
fn sample_and_judge(
    model: &StableDiffusion,
    cfg: &AttackConfig,
    token_text: &str,
    judge: &dyn Judge,
    guidance: f64,
    dir: &Path,
    device: &Device,
) -> Result<Vec<JudgedImage>> {
    let (files, prompts, seeds, pictures) = sample(model, cfg, token_text, guidance, dir, device)?;
    let verdicts = judge.judge(&pictures).context("the judge failed")?;
    Ok(verdicts
        .into_iter()
        .enumerate()
        .map(|(i, v)| JudgedImage {
            file: files[i].clone(),
            prompt: prompts[i].clone(),
            seed: seeds[i],
            concept: v.matches(&cfg.expect),
            labels: v.labels,
        })
        .collect())
}

/// The ids of the `k` vocabulary tokens whose rows are closest in cosine to the mean row of
/// `concept`'s tokens, best first; the concept's own tokens and the special ones left out.
pub fn nearest_tokens(model: &StableDiffusion, concept: &str, k: usize) -> Result<Vec<u32>> {
    let ids = model.tokenizer.tokenize(concept)?;
    if ids.is_empty() {
        anyhow::bail!("concept {concept:?} has no tokens");
    }
    let table = model
        .text_encoder
        .token_embedding_table()
        .to_dtype(candle_core::DType::F32)?;
    let rows: Vec<Vec<f32>> = table.to_vec2()?;
    let dim = rows[0].len();
    let mut query = vec![0f32; dim];
    for &id in &ids {
        for (q, v) in query.iter_mut().zip(&rows[id as usize]) {
            *q += v / ids.len() as f32;
        }
    }
    let norm = |v: &[f32]| {
        v.iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE)
    };
    let qn = norm(&query);
    let skip = [
        model.tokenizer.bos_id(),
        model.tokenizer.eos_id(),
        model.tokenizer.pad_id(),
    ];
    let mut scored: Vec<(f32, u32)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !ids.contains(&(*i as u32)) && !skip.contains(&(*i as u32)))
        .map(|(i, r)| {
            let dot: f32 = r.iter().zip(&query).map(|(a, b)| a * b).sum();
            (dot / (norm(r) * qn), i as u32)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(scored.into_iter().take(k).map(|(_, i)| i).collect())
}

type Sampled = (Vec<String>, Vec<String>, Vec<u64>, Vec<image::RgbImage>);

/// Every attack prompt with the learned tokens, `samples` images each, saved as PNGs in `dir`.
fn sample(
    model: &StableDiffusion,
    cfg: &AttackConfig,
    token_text: &str,
    guidance: f64,
    dir: &Path,
    device: &Device,
) -> Result<Sampled> {
    let size = model.default_image_side();
    let shape = model.latent_shape(cfg.samples, size, size)?;
    let (mut files, mut prompts, mut seeds, mut pictures) = (vec![], vec![], vec![], vec![]);
    for (pi, prompt) in crate::config::fill_prompts(&cfg.prompts, token_text)
        .into_iter()
        .enumerate()
    {
        let out = model.sample(
            &SampleRequest {
                prompt: &prompt,
                negative_prompt: "",
                sampler: fmn_sd::sample::scheduler::SamplerKind::Ddim,
                steps: cfg.sample_steps,
                guidance,
                guidance_rescale: 0.0,
                init_noise: seeded_noise(shape, cfg.sample_seed, device)?,
                attention_steps: &[],
                step_seed: fmn_sd::sample::pipeline::step_seed(cfg.sample_seed),
            },
            |_| {},
        )?;
        let images = model.decode(&out.latents)?;
        for k in 0..cfg.samples {
            let file = format!("p{pi:03}_n{k:02}.png");
            let picture = to_rgb_image(&images.get(k)?)?;
            let path = dir.join(&file);
            fmn_core::write_atomic(&path, |f| {
                picture
                    .write_to(f, image::ImageFormat::Png)
                    .map_err(std::io::Error::other)
            })
            .with_context(|| format!("cannot write {}", path.display()))?;
            files.push(file);
            prompts.push(prompt.clone());
            seeds.push(cfg.sample_seed.wrapping_add(k as u64));
            pictures.push(picture);
        }
    }
    Ok((files, prompts, seeds, pictures))
}
