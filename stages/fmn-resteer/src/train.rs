//! The re-steering loop: frozen VAE and text encoder, UNet deltas trained so that the concept's
//! tokens receive no cross-attention.
use crate::adversary::Adversary;
use crate::config::{ConceptKind, ConceptSpec, ResteerConfig, StepObjective};
use crate::loss::{anchor_offsets, anchoring, attention_energy, preservation};
use crate::params::Trainable;
use crate::preserve::{self, Encoder as _, Gram, GramCache, PreserveSummary};
use crate::prior::{PriorImages, PriorKey, PriorMemo};
use crate::prompts::{anchor_prompt, concept_prompt, entry_template, ConceptPrompt};
use crate::sibling;
use crate::solve::AnchorSolve;
use crate::ResteerError;
use candle_core::{DType, Device, Tensor};
use fmn_core::Validate;
use fmn_inversion::train::denoising_loss;
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{AddedTokens, TokenEmbedding};
use fmn_sd::io::source::ModelSource;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::ClipTextModel;
use fmn_sd::models::probes::resize_mask;
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};
use fmn_sd::models::vae::{AutoencoderKL, DiagonalGaussian};
use fmn_sd::sample::scheduler::SchedulerConfig;
use fmn_sd::train::images::TrainingImages;
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::scaffold::{
    sample_latent, timestep_range, train, training_resolution, NoisyLatents, Objective, RunControl,
    StepLoss, TrainError, TrainReport,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The frozen parts of a diffusers model folder, and the UNet's weights in memory.
pub struct Model {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// `None` when loaded for the solve alone, which encodes no image.
    pub vae: Option<AutoencoderKL>,
    pub unet_config: UNetConfig,
    /// Every UNet weight, or for the solve alone only those it changes.
    pub unet_weights: std::collections::HashMap<String, Tensor>,
    pub schedule: NoiseSchedule,
    /// The sampler's schedule and the model's guidance (`loss: denoise` samples images).
    pub scheduler: SchedulerConfig,
    pub guidance: f64,
    /// The model folder's own preservation prompts (`preserve.txt`), if it has them.
    pub preserve_list: Option<Vec<String>>,
    /// The prior images of the last `loss: denoise` run on this model.
    pub prior: PriorMemo,
}

impl Model {
    /// What a run of `cfg` needs of a diffusers folder or single file (f32): the text side,
    /// and with training steps the VAE and every UNet weight; the solve alone (no steps) reads
    /// only the UNet weights it changes, so a single file's other tensors are never converted.
    pub fn load(
        source: &ModelSource,
        device: &Device,
        cfg: &ResteerConfig,
    ) -> fmn_sd::Result<Self> {
        let te_cfg = source.text_encoder_config()?;
        let steps = cfg.max_train_steps > 0;
        let vae = if steps {
            let vae_cfg = source.vae_config()?;
            Some(source.build("vae", DType::F32, device, &[], |vb| {
                AutoencoderKL::new(vb, &vae_cfg)
            })?)
        } else {
            None
        };
        let set = cfg.param_set();
        let scheduler = source.scheduler_config()?;
        Ok(Self {
            tokenizer: source.tokenizer()?,
            text_encoder: source.build("text_encoder", DType::F32, device, &[], |vb| {
                ClipTextModel::new(vb, &te_cfg)
            })?,
            vae,
            unet_config: source.unet_config()?,
            unet_weights: source.load_tensors_where("unet", DType::F32, device, |name| {
                steps || crate::params::selected(set, name)
            })?,
            schedule: NoiseSchedule::from_config(&scheduler)?,
            scheduler,
            guidance: fmn_sd::io::sampling_defaults::resolve_guidance(None, source.path())?,
            preserve_list: model_preserve_list(source.path())?,
            prior: PriorMemo::default(),
        })
    }

    /// The VAE, loaded when the run has training steps.
    fn vae(&self) -> Result<&AutoencoderKL, ResteerError> {
        self.vae.as_ref().ok_or_else(|| {
            ResteerError::Input("training steps need the VAE: load the model for them".into())
        })
    }
}

fn model_preserve_list(model: &std::path::Path) -> fmn_sd::Result<Option<Vec<String>>> {
    let path = model.join(preserve::MODEL_LIST);
    if !model.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| fmn_sd::SdError::Invalid(format!("cannot read {}: {e}", path.display())))?;
    preserve::parse_list(&text)
        .map(Some)
        .map_err(|e| fmn_sd::SdError::Invalid(format!("{}: {e}", path.display())))
}

/// One concept, ready to train on.
struct PreparedConcept {
    prompts: Vec<(ConceptPrompt, Tensor, Tensor)>,
    /// Per image (and its mirror image): the VAE posterior `[1, C, h, w]`.
    latents: Vec<DiagonalGaussian>,
    /// Per entry of `latents`: the mask at the latent size `[1, 1, h, w]`.
    masks: Option<Vec<Tensor>>,
    /// With `anchor_weight`: every prompt's context rows and their target (the anchor prompt's
    /// rows pushed `anchor_push` past it), `[R, D]` each.
    anchor_rows: Option<(Tensor, Tensor)>,
    /// With `loss: denoise`: per prompt, its anchor prompt's hidden states `[1, 77, D]`.
    anchor_contexts: Vec<Tensor>,
    /// With `adversary_steps`: the attacker inside the run.
    adversary: Option<Adversary>,
    texts: ConceptPrompts,
    /// The sibling the concept is anchored onto, if it is.
    sibling: Option<String>,
}

/// A re-steering's result: the deltas of the changed UNet tensors and what the run did (the
/// report's `final_parts["attention"]` is the attention term alone at the last step).
pub struct Resteered {
    /// Keys `unet.{name}`: the original values of the changed tensors.
    pub base: BTreeMap<String, Tensor>,
    pub deltas: BTreeMap<String, Tensor>,
    pub report: TrainReport,
    /// What was preserved (`None`: nothing).
    pub preserved: Option<PreserveSummary>,
    /// Per concept, the prompts it was re-steered on.
    pub concepts: Vec<ConceptPrompts>,
}

/// A concept's prompts and, with `anchor_weight`, the anchor prompt of each.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConceptPrompts {
    pub name: String,
    pub prompts: Vec<String>,
    /// What replaced the concept in its anchor prompts (a sibling, the kind's default or
    /// `anchor`); `None` without anchoring.
    pub anchor: Option<String>,
    pub anchors: Vec<String>,
    /// The anchor term's weight for this concept (several concepts: the balanced solve's).
    pub anchor_weight: Option<f64>,
    /// After the solve: how far the concept's contexts remain from their targets, relative to
    /// the start (`‖C(I + G)ᵀ − A‖² / ‖C − A‖²`), and that distance in a solve of it alone.
    pub distance_to_targets: Option<[f64; 2]>,
}

/// The tokenizer and text encoder with the concepts' learned tokens (if any) added.
struct TextSide<'a> {
    tokenizer: ClipTokenizer,
    text_encoder: &'a ClipTextModel,
    added: Option<AddedTokens>,
    /// Per concept: what stands for it in prompts (its name, or its learned tokens, and with
    /// `also_name` its name too).
    concept_texts: Vec<Vec<String>>,
    /// Anchor prompts' contexts already encoded in this run (`[77, D]` each): the sibling
    /// search encodes a candidate's prompts once for all the run's concepts.
    encoded: std::cell::RefCell<std::collections::HashMap<String, Tensor>>,
}

impl<'a> TextSide<'a> {
    fn new(model: &'a Model, cfg: &ResteerConfig) -> Result<Self, ResteerError> {
        let mut tokenizer = model.tokenizer.clone();
        let (mut embeddings, mut names, mut concept_texts) = (Vec::new(), Vec::new(), Vec::new());
        for c in &cfg.multi_concept {
            let mut texts = Vec::new();
            match &c.embedding {
                Some(path) => {
                    let e = TokenEmbedding::load(path)?;
                    texts.push(e.tokens.join(" "));
                    if cfg.also_name {
                        texts.push(c.name.clone());
                    }
                    embeddings.push(e);
                    names.push(path.display().to_string());
                }
                None => texts.push(c.name.clone()),
            }
            for path in &c.adversarial {
                let e = TokenEmbedding::load(path)?;
                texts.push(e.tokens.join(" "));
                embeddings.push(e);
                names.push(path.display().to_string());
            }
            concept_texts.push(texts);
        }
        let added = if embeddings.is_empty() {
            None
        } else {
            Some(AddedTokens::install(
                embeddings,
                &names,
                &mut tokenizer,
                &model.text_encoder,
            )?)
        };
        Ok(Self {
            tokenizer,
            text_encoder: &model.text_encoder,
            added,
            concept_texts,
            encoded: Default::default(),
        })
    }

    /// `candidates` ordered by the cosine of their words' mean token embedding to `concept`'s,
    /// nearest first: a ranking that needs no encoder pass.
    fn nearest_by_token_embedding(
        &self,
        concept: &str,
        candidates: Vec<String>,
    ) -> Result<Vec<String>, ResteerError> {
        let table = self.text_encoder.token_embedding_table();
        let mean = |s: &str| -> Result<Option<Vec<f32>>, ResteerError> {
            let ids = self.tokenizer.tokenize(s)?;
            if ids.is_empty() {
                return Ok(None);
            }
            let ids = Tensor::new(ids, table.device())?;
            let rows = table.index_select(&ids, 0)?.to_dtype(DType::F32)?;
            Ok(Some(rows.mean(0)?.to_vec1::<f32>()?))
        };
        let cosine = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b)).max(f32::MIN_POSITIVE)
        };
        let Some(target) = mean(concept)? else {
            return Ok(candidates);
        };
        let mut scored = Vec::with_capacity(candidates.len());
        for c in candidates {
            let score = mean(&c)?.map_or(f32::NEG_INFINITY, |m| cosine(&m, &target));
            scored.push((score, c));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored.into_iter().map(|(_, c)| c).collect())
    }

    /// `prompts` -> hidden states `[B, 77, D]`, each prompt encoded once per run (the new
    /// ones in one batch).
    fn encode_once(&self, prompts: &[&str]) -> Result<Tensor, ResteerError> {
        let mut new: Vec<&str> = Vec::new();
        for p in prompts {
            if !self.encoded.borrow().contains_key(*p) && !new.contains(p) {
                new.push(p);
            }
        }
        if !new.is_empty() {
            let contexts = self.encode_prompts(&new)?;
            let mut memo = self.encoded.borrow_mut();
            for (i, p) in new.iter().enumerate() {
                memo.insert(p.to_string(), contexts.get(i)?);
            }
        }
        let memo = self.encoded.borrow();
        let rows = prompts.iter().map(|p| memo[*p].clone()).collect::<Vec<_>>();
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// `ids [B, 77]` -> hidden states `[B, 77, D]`, detached.
    fn encode(&self, ids: &Tensor) -> Result<Tensor, ResteerError> {
        let out = match &self.added {
            Some(a) => self
                .text_encoder
                .forward_with_token_embeddings(ids, &a.rows)?,
            None => self.text_encoder.forward(ids)?,
        };
        Ok(out.detach())
    }
}

impl preserve::Encoder for TextSide<'_> {
    fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor, ResteerError> {
        let ids = self.tokenizer.encode_batch(prompts)?;
        let ids = Tensor::new(ids, self.text_encoder.device())?;
        self.encode(&ids)
    }

    /// The token table's hash and the bits of one probe prompt's contexts: what any change of
    /// the encoder's weights or tokenizer changes.
    fn fingerprint(&self) -> Result<String, ResteerError> {
        let probe = self.encode_prompts(&["a photo of a cat on a red chair"])?;
        let bits: Vec<u8> = probe
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let table = fmn_sd::io::embedding::token_table_fingerprint(self.text_encoder)?;
        let mut h = Sha256::new();
        h.update(table.as_bytes());
        h.update(&bits);
        Ok(hex::encode(h.finalize()))
    }
}

/// The concept's prompt templates: its kind's, then (with `listed_concept_prompts`) each
/// preserved entry naming it and no other concept of the run ([`entry_template`]): an entry
/// naming two ("a red circle in the style of stripes") would be anchored onto the other
/// concept by each, two targets that pull apart.
fn concept_templates(spec: &ConceptSpec, cfg: &ResteerConfig, listed: &[String]) -> Vec<String> {
    let kind = cfg.templates(spec.kind);
    let mut templates = kind.to_vec();
    if cfg.listed_concept_prompts {
        let others: Vec<String> = cfg
            .multi_concept
            .iter()
            .filter(|c| c.name != spec.name)
            .map(|c| c.name.clone())
            .collect();
        templates.extend(
            listed
                .iter()
                .filter(|entry| !preserve::names_any(entry, &others))
                .filter_map(|entry| entry_template(entry, &spec.name, kind)),
        );
    }
    let mut seen = std::collections::HashSet::new();
    templates.retain(|t| seen.insert(t.clone()));
    templates
}

/// The run's preserved prompts and their contexts' mean Gram matrix (`None`: nothing preserved).
#[derive(Clone, Copy)]
struct Preserved<'a> {
    prompts: &'a [String],
    gram_mean: Option<&'a Tensor>,
    /// The preserved prompts an object's sibling may come from: of the shipped lists, objects
    /// and animals only (`preserve::OBJECT_LISTS`); the model's own and the user's all.
    sibling_pool: &'a [String],
    /// The siblings the run's earlier concepts were anchored onto: not a later one's while
    /// another candidate is left.
    taken_siblings: &'a [String],
}

/// `prompts` without the shipped lists' entries that name no thing (people, scenes, styles).
fn sibling_pool(prompts: &[String]) -> Result<Vec<String>, ResteerError> {
    let not_things: std::collections::HashSet<String> =
        preserve::shipped_prompts_of(|list| !preserve::OBJECT_LISTS.contains(&list))?
            .into_iter()
            .collect();
    Ok(prompts
        .iter()
        .filter(|p| !not_things.contains(*p))
        .cloned()
        .collect())
}

/// A concept's anchoring: what replaces it in its anchor prompts, how far past them its target
/// lies, and the anchor prompts, one per concept prompt.
struct Anchoring {
    anchor: String,
    push: f64,
    texts: Vec<String>,
    /// Whether `anchor` is a sibling chosen from the preserved list.
    sibling: bool,
}

impl Anchoring {
    /// `anchor` in place of the concept in each of `templates` (one per concept prompt).
    fn new(anchor: &str, push: f64, templates: &[&String]) -> Self {
        Self {
            anchor: anchor.to_string(),
            push,
            texts: templates.iter().map(|t| anchor_prompt(t, anchor)).collect(),
            sibling: false,
        }
    }

    /// The targets of the concept's context rows `contexts` (`[R, D]`): its anchor prompts'
    /// rows, `push` concept-to-anchor distances past them.
    fn targets(&self, text: &TextSide, contexts: &Tensor) -> Result<Tensor, ResteerError> {
        let refs: Vec<&str> = self.texts.iter().map(String::as_str).collect();
        let anchors = text.encode_once(&refs)?;
        let (b, n, d) = anchors.dims3()?;
        let anchors = anchors.reshape((b * n, d))?;
        Ok((&anchors + ((&anchors - contexts)? * self.push)?)?)
    }
}

/// The concept's anchoring: `anchor` if set; for an object with `sibling_anchor`, the sibling of
/// the preserved list (`sibling.rs`; of the shipped lists, objects and animals only) whose
/// prompts the solve alone gets the concept's closest to (the smallest share of the start
/// distance left: the nearest in context space is not it, "circle" → "square" left 32 % and
/// drew circles), the target `sibling_push` [0] past it; else the kind's default with `anchor_push`
/// (BENCHMARKS.md#sibling-anchors-2026-12-07). A sibling an earlier concept of the run took is
/// a candidate only when no other is left: two concepts turned into one thing broke more of
/// the other prompts (BENCHMARKS.md#distinct-siblings-2026-12-07).
fn choose_anchoring(
    text: &TextSide,
    spec: &ConceptSpec,
    cfg: &ResteerConfig,
    preserved: Preserved,
    templates: &[String],
    per_prompt: &[&String],
    contexts: &Tensor,
) -> Result<(Anchoring, Tensor), ResteerError> {
    let fallback = || -> Result<(Anchoring, Tensor), ResteerError> {
        let a = Anchoring::new(
            cfg.anchor_for(spec.kind),
            cfg.push_for(spec.kind),
            per_prompt,
        );
        let targets = a.targets(text, contexts)?;
        Ok((a, targets))
    };
    if !wants_sibling(cfg, spec) {
        return fallback();
    }
    let names: Vec<String> = cfg.multi_concept.iter().map(|c| c.name.clone()).collect();
    let mut candidates: Vec<String> =
        sibling::candidates(templates, preserved.sibling_pool, &spec.name, &names)
            .into_iter()
            .map(|c| c.filler)
            .collect();
    let untaken: Vec<String> = candidates
        .iter()
        .filter(|c| {
            !preserved
                .taken_siblings
                .iter()
                .any(|t| t.eq_ignore_ascii_case(c))
        })
        .cloned()
        .collect();
    if untaken.is_empty() && !candidates.is_empty() {
        tracing::warn!(
            "{}: every sibling candidate ({}) is another concept's of this run; sharing one",
            spec.name,
            candidates.join(", ")
        );
    } else {
        candidates = untaken;
    }
    if candidates.len() > sibling::SOLVED_CANDIDATES {
        candidates = text.nearest_by_token_embedding(&spec.name, candidates)?;
        candidates.truncate(sibling::SOLVED_CANDIDATES);
    }
    if candidates.is_empty() {
        return fallback();
    }
    let mut anchorings: Vec<Anchoring> = candidates
        .iter()
        .map(|c| Anchoring::new(c, 0.0, per_prompt))
        .collect();
    // One batch for every candidate's anchor prompts.
    let all: Vec<&str> = anchorings
        .iter()
        .flat_map(|a| a.texts.iter().map(String::as_str))
        .collect();
    text.encode_once(&all)?;
    let (mut left, mut targets) = (Vec::new(), Vec::new());
    for anchoring in &anchorings {
        let t = anchoring.targets(text, contexts)?;
        let solve = AnchorSolve::new(&[(contexts.clone(), t.clone())], preserved.gram_mean)?;
        left.push(solve.alone(0, cfg.anchor_weight, cfg.preserve_weight)?);
        targets.push(t);
    }
    match sibling::nearest(&left) {
        Some(i) => {
            tracing::info!(
                "{}: anchored onto its sibling {:?} of the preserved list ({:.3} of the distance left alone; {} candidates)",
                spec.name,
                candidates[i],
                left[i],
                candidates.len()
            );
            let mut chosen = anchorings.swap_remove(i);
            chosen.sibling = true;
            if cfg.sibling_push == 0.0 {
                return Ok((chosen, targets.swap_remove(i)));
            }
            chosen.push = cfg.sibling_push;
            let targets = chosen.targets(text, contexts)?;
            Ok((chosen, targets))
        }
        None => fallback(),
    }
}

/// Whether `spec` is anchored onto a sibling (an object, `sibling_anchor`, no `anchor` given).
fn wants_sibling(cfg: &ResteerConfig, spec: &ConceptSpec) -> bool {
    cfg.anchor.is_none() && cfg.sibling_anchor && spec.kind == ConceptKind::Object
}

fn prepare(
    model: &Model,
    text: &TextSide,
    index: usize,
    cfg: &ResteerConfig,
    preserved: Preserved,
    resolution: usize,
    device: &Device,
) -> Result<PreparedConcept, ResteerError> {
    let spec = &cfg.multi_concept[index];
    let mut prompts = Vec::new();
    let texts = &text.concept_texts[index];
    let templates = concept_templates(spec, cfg, preserved.prompts);
    let mut per_prompt = Vec::new();
    for (template, concept) in templates
        .iter()
        .flat_map(|t| texts.iter().map(move |c| (t, c)))
    {
        let p = concept_prompt(&text.tokenizer, template, concept, cfg.pooler())?;
        let ids = Tensor::new(p.ids.as_slice(), device)?.unsqueeze(0)?;
        let context = text.encode(&ids)?;
        let positions = Tensor::new(
            p.positions.iter().map(|&x| x as u32).collect::<Vec<_>>(),
            device,
        )?;
        prompts.push((p, context, positions));
        per_prompt.push(template);
    }
    let (anchor_rows, anchoring) = if cfg.anchor_weight > 0.0 {
        let contexts: Vec<Tensor> = prompts.iter().map(|(_, c, _)| c.clone()).collect();
        let contexts = Tensor::cat(&contexts, 0)?;
        let (b, n, d) = contexts.dims3()?;
        let contexts = contexts.reshape((b * n, d))?;
        let (anchoring, targets) = choose_anchoring(
            text,
            spec,
            cfg,
            preserved,
            &templates,
            &per_prompt,
            &contexts,
        )?;
        (Some((contexts, targets)), Some(anchoring))
    } else {
        (None, None)
    };
    let mut anchor_contexts = Vec::new();
    if let (Some(a), StepObjective::Denoise, true) = (&anchoring, cfg.loss, cfg.max_train_steps > 0)
    {
        let refs: Vec<&str> = a.texts.iter().map(String::as_str).collect();
        let encoded = text.encode_once(&refs)?;
        for i in 0..refs.len() {
            anchor_contexts.push(encoded.get(i)?.unsqueeze(0)?);
        }
    }
    let adversary = if cfg.adversary_steps > 0 && !anchor_contexts.is_empty() {
        Some(Adversary::new(
            &text.tokenizer,
            text.text_encoder,
            &per_prompt,
            cfg.pooler(),
            index,
            cfg.seed ^ (0xad5e_0000 + index as u64),
            device,
        )?)
    } else {
        None
    };
    let (mut latents, mut masks) = (Vec::new(), None);
    // The solve alone (no steps) needs no images.
    match (&spec.images, cfg.max_train_steps > 0) {
        (Some(dir), true) => {
            (latents, masks) =
                encode_images(model, dir, spec.masks.as_deref(), resolution, device)?;
        }
        (Some(dir), false) => tracing::info!(
            "{}: the solve alone does not read the images in {} (only steps do: --steps N)",
            spec.name,
            dir.display()
        ),
        (None, _) => {}
    }
    let sibling = anchoring
        .as_ref()
        .filter(|a| a.sibling)
        .map(|a| a.anchor.clone());
    let texts = ConceptPrompts {
        name: spec.name.clone(),
        prompts: prompts.iter().map(|(p, _, _)| p.text.clone()).collect(),
        anchor: anchoring.as_ref().map(|a| a.anchor.clone()),
        anchors: anchoring.map(|a| a.texts).unwrap_or_default(),
        anchor_weight: None,
        distance_to_targets: None,
    };
    Ok(PreparedConcept {
        prompts,
        latents,
        masks,
        anchor_rows,
        anchor_contexts,
        adversary,
        texts,
        sibling,
    })
}

/// Each image and its mirror image as VAE posteriors, and their masks at the latent size.
type EncodedImages = (Vec<DiagonalGaussian>, Option<Vec<Tensor>>);

fn encode_images(
    model: &Model,
    dir: &std::path::Path,
    mask_dir: Option<&std::path::Path>,
    resolution: usize,
    device: &Device,
) -> Result<EncodedImages, ResteerError> {
    let images = TrainingImages::load(dir, mask_dir)?;
    let factor = model.vae()?.downscale_factor();
    let mut latents = Vec::new();
    let mut masks = images.has_masks().then(Vec::new);
    for i in 0..images.len() {
        let ex = images.example(i, resolution as u32, None, device)?;
        for flip in [false, true] {
            let px = if flip {
                ex.pixels.flip(&[3])?
            } else {
                ex.pixels.clone()
            };
            latents.push(model.vae()?.encode(&px)?.detach());
            if let (Some(out), Some(m)) = (masks.as_mut(), ex.mask.as_ref()) {
                let m = if flip { m.flip(&[3])? } else { m.clone() };
                let (h, w) = (resolution / factor, resolution / factor);
                out.push(resize_mask(&m, h, w)?);
            }
        }
    }
    Ok((latents, masks))
}

/// The preserved prompts: the model's own list, else the shipped lists (`builtin_preserve`), the
/// `preserve_files` and the inline `preserve_prompts`, each once, in that order.
fn preserve_prompts(model: &Model, cfg: &ResteerConfig) -> Result<Vec<String>, ResteerError> {
    let mut prompts = Vec::new();
    if !cfg.preserve || cfg.preserve_weight <= 0.0 {
        return Ok(prompts);
    }
    let names: Vec<String> = cfg.multi_concept.iter().map(|c| c.name.clone()).collect();
    if cfg.builtin_preserve {
        // A model's own list says what it draws; the shipped lists stand in for it on models
        // without one. Both together diluted the toy model's list 50-fold and left stripes
        // unforgotten (BENCHMARKS.md#re-steering-defaults).
        match &model.preserve_list {
            Some(own) => prompts.extend(own.iter().cloned()),
            None => prompts.extend(preserve::shipped_prompts()?),
        }
    }
    for file in &cfg.preserve_files {
        let list = preserve::read_list(file)?;
        if list.iter().all(|p| preserve::names_any(p, &names)) {
            return Err(ResteerError::Input(format!(
                "every prompt of the preserve list {} names a concept being forgotten: nothing in it would be preserved",
                file.display()
            )));
        }
        prompts.extend(list);
    }
    prompts.extend(cfg.preserve_prompts.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    prompts.retain(|p| seen.insert(p.clone()));
    Ok(prompts)
}

/// Re-steering's per-step loss: per concept a batch of its latents noised at random
/// timesteps under one of its prompts, the attention energy on its tokens (L2 norm over every
/// `attn2`, masked if masks are given), plus the K/V preservation and anchor terms.
struct Resteering<'a> {
    model: &'a Model,
    cfg: &'a ResteerConfig,
    concepts: Vec<PreparedConcept>,
    /// The rows of the run's added tokens (learned and adversarial embeddings), which the
    /// attackers' prompts are encoded with.
    added_rows: Option<Tensor>,
    trainable: Trainable,
    kv_names: Vec<String>,
    preserve: Option<Tensor>,
    /// Per anchored concept: its context rows and the anchor offsets per K/V delta.
    anchored: Vec<(Tensor, Vec<Tensor>)>,
    /// Per anchored concept: its anchor term's weight.
    anchor_weights: Vec<f64>,
    /// With `loss: denoise`: the UNet without deltas, and the base model's images of preserved
    /// prompts (`None`: nothing preserved).
    denoise: Option<(UNet2DConditionModel, Option<PriorImages>)>,
    timesteps: (usize, usize),
    device: Device,
}

/// Up to `count` of `candidates`, evenly spread over the list.
fn spread<'p>(candidates: &[&'p str], count: usize) -> Vec<&'p str> {
    let n = candidates.len().min(count);
    (0..n)
        .map(|i| candidates[i * candidates.len() / n])
        .collect()
}

/// The preserved prompts the base model draws prior images of: up to `cfg.prior_images` of
/// `prompts` naming no concept of the run; first, per concept, the `cfg.prior_nearest` that
/// best explain its images ([`crate::prior::explaining`]), then the rest spread over the list.
fn prior_prompts<'p>(
    model: &Model,
    cfg: &ResteerConfig,
    text: &TextSide,
    base: &UNet2DConditionModel,
    concepts: &[PreparedConcept],
    prompts: &'p [String],
    timesteps: (usize, usize),
) -> Result<Vec<&'p str>, ResteerError> {
    let names: Vec<String> = cfg.multi_concept.iter().map(|c| c.name.clone()).collect();
    let candidates: Vec<&str> = prompts
        .iter()
        .filter(|p| !preserve::names_any(p, &names))
        .map(String::as_str)
        .collect();
    let mut kept: Vec<&str> = Vec::new();
    if cfg.prior_nearest > 0 {
        let scaling = model.vae()?.scaling_factor();
        for (i, c) in concepts.iter().enumerate() {
            // Streams of their own, so that the training's draws stay those of `seed`.
            let mut rng = NoiseRng::new(cfg.seed ^ 0xe1a1 ^ i as u64);
            let images = c
                .latents
                .iter()
                .map(|l| sample_latent(l, scaling, &mut rng))
                .collect::<Result<Vec<_>, _>>()?;
            let mut shortlist: Vec<String> = candidates.iter().map(|p| p.to_string()).collect();
            if shortlist.len() > crate::prior::EXPLAIN_CANDIDATES {
                shortlist =
                    text.nearest_by_token_embedding(&cfg.multi_concept[i].name, shortlist)?;
                shortlist.truncate(crate::prior::EXPLAIN_CANDIDATES);
            }
            let scored: Vec<&str> = candidates
                .iter()
                .copied()
                .filter(|p| shortlist.iter().any(|n| n == p))
                .collect();
            let ranked = crate::prior::explaining(
                base,
                &model.schedule,
                &text.encode_once(&scored)?,
                &images,
                timesteps,
                cfg.seed ^ 0xe1a2 ^ i as u64,
            )?;
            let nearest: Vec<&str> = ranked
                .into_iter()
                .map(|k| scored[k])
                .filter(|p| !kept.contains(p))
                .take(cfg.prior_nearest)
                .collect();
            tracing::info!(
                "prior images of the prompts that best explain {}'s images: {nearest:?}",
                cfg.multi_concept[i].name
            );
            kept.extend(nearest);
        }
        kept.truncate(cfg.prior_images);
    }
    let rest: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|p| !kept.contains(p))
        .collect();
    kept.extend(spread(&rest, cfg.prior_images - kept.len()));
    Ok(kept)
}

impl Objective for Resteering<'_> {
    fn state(&self) -> Vec<(String, candle_core::Var)> {
        self.concepts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let a = c.adversary.as_ref()?;
                Some((format!("adversary/{i}"), a.var().clone()))
            })
            .collect()
    }

    fn loss(&mut self, _step: usize, rng: &mut NoiseRng) -> Result<StepLoss, TrainError> {
        let (cfg, model, device) = (self.cfg, self.model, &self.device);
        let scaling = model.vae()?.scaling_factor();
        // With attackers, their steps run on a frozen view of the same weights: their
        // gradient is the token rows', and the weights' would be computed and dropped.
        let (unet, frozen) = if self.concepts.iter().any(|c| c.adversary.is_some()) {
            let (unet, frozen) = self.trainable.unet_and_frozen(device)?;
            (unet, Some(frozen))
        } else {
            (self.trainable.unet(device)?, None)
        };
        // Per concept: the attention energy's norm, or with `loss: denoise` the erasure term.
        let mut concept_loss: Option<Tensor> = None;
        let mut preserved_loss: Option<Tensor> = None;
        // The attackers' denoising loss before their last step (reported, not minimised).
        let mut attack_loss: Option<Tensor> = None;
        let add = |sum: Option<Tensor>, t: Tensor| -> candle_core::Result<Option<Tensor>> {
            Ok(Some(match sum {
                None => t,
                Some(s) => (s + t)?,
            }))
        };
        for c in &self.concepts {
            let k = rng.below(0, c.prompts.len());
            let (_, context, positions) = &c.prompts[k];
            let mut x0 = Vec::new();
            let mut masks = Vec::new();
            let mut ts = Vec::new();
            for _ in 0..cfg.train_batch_size {
                let i = rng.below(0, c.latents.len());
                x0.push(sample_latent(&c.latents[i], scaling, rng)?);
                if let Some(m) = &c.masks {
                    masks.push(m[i].clone());
                }
                ts.push(rng.below(self.timesteps.0, self.timesteps.1));
            }
            let x0 = Tensor::cat(&x0, 0)?;
            let noisy = NoisyLatents::draw(&model.schedule, &x0, &ts, rng)?;
            let ctx = context.repeat((cfg.train_batch_size, 1, 1))?;
            if let Some((base, preserved)) = &self.denoise {
                // ESD's erasure onto the anchor: eps(x_t, concept) → eps_base(x_t, anchor).
                let anchor = c.anchor_contexts[k].repeat((cfg.train_batch_size, 1, 1))?;
                let erase = prediction_gap(&unet, base, &noisy, &ctx, &anchor)?;
                concept_loss = add(concept_loss, erase)?;
                if let Some(adversary) = &c.adversary {
                    // The attacker's prompt in place of the concept's, erased onto the same anchor.
                    let (drawn, attacked) = adversary.attack(
                        &model.text_encoder,
                        self.added_rows.as_ref(),
                        frozen.as_ref().unwrap_or(&unet),
                        &noisy,
                        k,
                        cfg.adversary_steps,
                        cfg.adversary_lr,
                    )?;
                    attack_loss = add(attack_loss, Tensor::new(drawn as f32, device)?)?;
                    let erase = prediction_gap(&unet, base, &noisy, &attacked, &anchor)?;
                    concept_loss = add(concept_loss, erase)?;
                }
                if let Some(prior) = preserved {
                    // One of the base model's own images, under its prompt, at other timesteps.
                    let k = rng.below(0, prior.latents.dim(0)?);
                    let x0 = prior.latents.get(k)?.unsqueeze(0)?;
                    let x0 = x0.repeat((cfg.train_batch_size, 1, 1, 1))?;
                    let ts: Vec<usize> = (0..cfg.train_batch_size)
                        .map(|_| rng.below(self.timesteps.0, self.timesteps.1))
                        .collect();
                    let noisy = NoisyLatents::draw(&model.schedule, &x0, &ts, rng)?;
                    let p = prior.contexts.get(k)?.unsqueeze(0)?;
                    let p = p.repeat((cfg.train_batch_size, 1, 1))?;
                    let kept = prediction_gap(&unet, base, &noisy, &p, &p)?;
                    preserved_loss = add(preserved_loss, kept)?;
                }
                continue;
            }
            let recorder = AttentionRecorder::new();
            unet.forward_with_probe(&noisy.x_t, &noisy.t, &ctx, Some(&recorder))?;
            let mask = if masks.is_empty() {
                None
            } else {
                Some(Tensor::cat(&masks, 0)?)
            };
            let energy = attention_energy(&recorder.take(), positions, mask.as_ref())?;
            concept_loss = add(concept_loss, energy.sqrt()?)?;
        }
        let Some(concept_loss) = concept_loss else {
            return Err(TrainError::Input("no concept to re-steer".into()));
        };
        let mut loss = concept_loss.clone();
        let mut parts = vec![(
            match cfg.loss {
                StepObjective::Attention => "attention",
                StepObjective::Denoise => "denoise",
            },
            concept_loss,
        )];
        if let Some(p) = preserved_loss {
            loss = (loss + (&p * cfg.preserve_weight)?)?;
            parts.push(("preserved", p));
        }
        if let Some(a) = attack_loss {
            parts.push(("adversary", a));
        }
        if self.preserve.is_some() || !self.anchored.is_empty() {
            let deltas = self
                .kv_names
                .iter()
                .filter_map(|n| self.trainable.delta(n).transpose())
                .collect::<candle_core::Result<Vec<_>>>()?;
            if let (Some(contexts), false) = (&self.preserve, deltas.is_empty()) {
                loss = (loss + (preservation(contexts, &deltas)? * cfg.preserve_weight)?)?;
            }
            for ((rows, offsets), w) in self.anchored.iter().zip(&self.anchor_weights) {
                loss = (loss + (anchoring(rows, &deltas, offsets)? * *w)?)?;
            }
        }
        Ok(StepLoss { total: loss, parts })
    }
}

/// Re-steers `model` as `cfg` says; the preserved prompts' statistics come from `cache` when
/// it has them (and are stored there when not).
pub fn resteer(
    model: &Model,
    cfg: &ResteerConfig,
    device: &Device,
    run: RunControl,
    cache: Option<&GramCache>,
) -> Result<Resteered, ResteerError> {
    let started = std::time::Instant::now();
    let set = cfg.param_set();
    cfg.validate().map_err(ResteerError::Input)?;
    // Only steps sample latents; the solve alone needs no resolution.
    let resolution = match cfg.max_train_steps {
        0 => 0,
        _ => training_resolution(cfg.resolution, &model.unet_config, model.vae()?)?,
    };
    let timesteps = timestep_range(cfg.timesteps, &model.schedule)?;
    let text = TextSide::new(model, cfg)?;
    let prompts = preserve_prompts(model, cfg)?;
    let names: Vec<String> = cfg.multi_concept.iter().map(|c| c.name.clone()).collect();
    let (gram, preserved) = if prompts.is_empty() {
        (None, None)
    } else {
        let (gram, summary) = preserve::preserved_gram(&text, &prompts, &names, cache, device)?;
        (gram, Some(summary))
    };
    let preserve = gram.as_ref().map(Gram::mean).transpose()?;
    let pool = if cfg.multi_concept.iter().any(|c| wants_sibling(cfg, c)) {
        sibling_pool(&prompts)?
    } else {
        Vec::new()
    };
    let mut concepts: Vec<PreparedConcept> = Vec::new();
    let mut taken_siblings = Vec::new();
    for i in 0..cfg.multi_concept.len() {
        let preserved = Preserved {
            prompts: &prompts,
            gram_mean: preserve.as_ref(),
            sibling_pool: &pool,
            taken_siblings: &taken_siblings,
        };
        let concept = prepare(model, &text, i, cfg, preserved, resolution, device)?;
        taken_siblings.extend(concept.sibling.clone());
        concepts.push(concept);
    }
    let mut concept_texts: Vec<ConceptPrompts> = concepts.iter().map(|c| c.texts.clone()).collect();
    let trainable = Trainable::new(
        model.unet_weights.clone(),
        model.unet_config.clone(),
        set,
        cfg.lora_rank,
        cfg.seed ^ 0x5eed,
    )?;
    if trainable.is_empty() {
        return Err(ResteerError::Input(format!(
            "no UNet weight matches `params: {set:?}`{}",
            if cfg.lora_rank.is_some() {
                " as a matrix (LoRA needs 2-D weights)"
            } else {
                ""
            }
        )));
    }
    let kv_names: Vec<String> = trainable
        .names()
        .filter(|n| n.contains(".attn2.to_k.") || n.contains(".attn2.to_v."))
        .cloned()
        .collect();
    if cfg.anchor_weight > 0.0 && kv_names.is_empty() {
        return Err(ResteerError::Input(
            "`anchor_weight` acts on the cross-attention key/value projections, and `params` trains none"
                .into(),
        ));
    }
    // Per concept: its context rows and the anchor offsets per K/V delta, in `kv_names`' order.
    let kv_base: Vec<&Tensor> = kv_names.iter().filter_map(|n| trainable.base(n)).collect();
    let anchored = concepts
        .iter()
        .filter_map(|c| c.anchor_rows.as_ref())
        .map(|(rows, anchor)| Ok((rows.clone(), anchor_offsets(rows, anchor, &kv_base)?)))
        .collect::<Result<Vec<_>, ResteerError>>()?;
    // Per concept: its anchor term's weight. One concept: `anchor_weight`; several: the
    // balanced solve's (each as close to its targets as alone, the preserved prompts paying
    // only for the concepts that need it: `AnchorSolve::balanced`), else the mean of the terms.
    let mut anchor_weights = vec![cfg.anchor_weight / anchored.len().max(1) as f64; anchored.len()];
    if cfg.solve_anchor {
        let rows: Vec<(Tensor, Tensor)> = concepts
            .iter()
            .filter_map(|c| c.anchor_rows.clone())
            .collect();
        let solved = AnchorSolve::new(&rows, preserve.as_ref())?
            .balanced(cfg.anchor_weight, cfg.preserve_weight)?;
        for ((c, &w), &(joint, alone)) in concept_texts
            .iter_mut()
            .zip(&solved.weights)
            .zip(&solved.residuals)
        {
            tracing::info!(
                "{}: anchor weight {w:.3}, distance to its targets {joint:.4} of the start ({alone:.4} alone)",
                c.name
            );
            c.anchor_weight = Some(w);
            c.distance_to_targets = Some([joint, alone]);
        }
        for (name, w) in kv_names.iter().zip(&kv_base) {
            if !trainable.set_full(name, &w.matmul(&solved.map)?)? {
                return Err(ResteerError::Input(format!(
                    "`solve_anchor` needs a full delta for {name}"
                )));
            }
        }
        anchor_weights = solved.weights;
    }
    if !anchored.is_empty() {
        for (c, &w) in concept_texts.iter_mut().zip(&anchor_weights) {
            c.anchor_weight.get_or_insert(w);
        }
    }
    if cfg.max_train_steps == 0 {
        let (base, deltas) = trainable.export()?;
        return Ok(Resteered {
            base,
            deltas,
            report: solve_only_report(
                started,
                trainable.vars().iter().map(|(_, v)| v.elem_count()).sum(),
            ),
            preserved,
            concepts: concept_texts,
        });
    }
    let vars = trainable.vars();
    let plan = cfg.adam.schedule(
        cfg.max_train_steps,
        cfg.seed,
        cfg.learning_rate,
        cfg.adam_weight_decay,
    );
    let denoise = match cfg.loss {
        StepObjective::Attention => None,
        StepObjective::Denoise => {
            let base = trainable.base_unet(device)?;
            let kept = prior_prompts(model, cfg, &text, &base, &concepts, &prompts, timesteps)?;
            let prior = if kept.is_empty() {
                None
            } else {
                let factor = model.vae()?.downscale_factor();
                let side = resolution / factor;
                let key = PriorKey {
                    prompts: kept.iter().map(|p| p.to_string()).collect(),
                    latent: [model.unet_config.in_channels, side, side],
                    seed: cfg.seed,
                };
                Some(model.prior.get_or_draw(key, |key| {
                    tracing::info!("sampling {} images of preserved prompts", key.prompts.len());
                    Ok::<_, ResteerError>(PriorImages::sample(
                        &base,
                        &model.scheduler,
                        text.encode_prompts(&kept)?,
                        &text.encode_prompts(&[""])?,
                        model.guidance,
                        key.latent,
                        key.seed,
                        device,
                    )?)
                })?)
            };
            Some((base, prior))
        }
    };
    let mut objective = Resteering {
        model,
        cfg,
        concepts,
        added_rows: text.added.as_ref().map(|a| a.rows.clone()),
        trainable,
        kv_names,
        preserve,
        anchored,
        anchor_weights,
        denoise,
        timesteps,
        device: device.clone(),
    };
    let report = train(&vars, &plan, cfg, run, &mut objective)?;
    let (base, deltas) = objective.trainable.export()?;
    Ok(Resteered {
        base,
        deltas,
        report,
        preserved,
        concepts: concept_texts,
    })
}

/// The report of a run that only solved: no steps, no loss.
fn solve_only_report(started: std::time::Instant, trained_values: usize) -> TrainReport {
    TrainReport {
        steps: 0,
        resumed_from: 0,
        first_loss: f64::NAN,
        final_loss: f64::NAN,
        early_mean_loss: f64::NAN,
        late_mean_loss: f64::NAN,
        final_parts: BTreeMap::new(),
        trained_values,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// ‖ε(x_t, `context`) − ε_base(x_t, `target_context`)‖² (mean), the base side without gradient.
fn prediction_gap(
    unet: &UNet2DConditionModel,
    base: &UNet2DConditionModel,
    noisy: &NoisyLatents,
    context: &Tensor,
    target_context: &Tensor,
) -> Result<Tensor, ResteerError> {
    let pred = unet.forward(&noisy.x_t, &noisy.t, context)?;
    let target = base.forward(&noisy.x_t, &noisy.t, target_context)?.detach();
    denoising_loss(&pred, &target, None)
}
