//! The re-steering loop: frozen VAE and text encoder, UNet deltas trained so that the concept's
//! tokens receive no cross-attention.
use crate::config::ResteerConfig;
use crate::loss::{anchor_offsets, anchoring, attention_energy, preservation};
use crate::params::Trainable;
use crate::prompts::{anchor_prompt, concept_prompt, ConceptPrompt};
use crate::solve::anchor_solution_map;
use crate::ResteerError;
use candle_core::{DType, Device, Tensor};
use fmn_core::Validate;
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{AddedTokens, TokenEmbedding};
use fmn_sd::io::source::ModelSource;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::ClipTextModel;
use fmn_sd::models::probes::resize_mask;
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::UNetConfig;
use fmn_sd::models::vae::{AutoencoderKL, DiagonalGaussian};
use fmn_sd::train::images::TrainingImages;
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::scaffold::{
    sample_latent, timestep_range, train, training_resolution, NoisyLatents, Objective, RunControl,
    StepLoss, TrainError, TrainReport,
};
use std::collections::BTreeMap;

/// The frozen parts of a diffusers model folder, and the UNet's weights in memory.
pub struct Model {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub vae: AutoencoderKL,
    pub unet_config: UNetConfig,
    pub unet_weights: std::collections::HashMap<String, Tensor>,
    pub schedule: NoiseSchedule,
}

impl Model {
    /// The frozen components and the UNet's weights (f32) of a diffusers folder or single file.
    pub fn load(source: &ModelSource, device: &Device) -> fmn_sd::Result<Self> {
        let te_cfg = source.text_encoder_config()?;
        let vae_cfg = source.vae_config()?;
        Ok(Self {
            tokenizer: source.tokenizer()?,
            text_encoder: source.build("text_encoder", DType::F32, device, &[], |vb| {
                ClipTextModel::new(vb, &te_cfg)
            })?,
            vae: source.build("vae", DType::F32, device, &[], |vb| {
                AutoencoderKL::new(vb, &vae_cfg)
            })?,
            unet_config: source.unet_config()?,
            unet_weights: source.load_tensors("unet", DType::F32, device)?,
            schedule: NoiseSchedule::from_config(&source.scheduler_config()?)?,
        })
    }
}

/// One concept, ready to train on.
struct PreparedConcept {
    prompts: Vec<(ConceptPrompt, Tensor, Tensor)>,
    /// Per image (and its mirror image): the VAE posterior `[1, C, h, w]`.
    latents: Vec<DiagonalGaussian>,
    /// Per entry of `latents`: the mask at the latent size `[1, 1, h, w]`.
    masks: Option<Vec<Tensor>>,
    /// With `anchor_weight`: every prompt's context rows and its anchor prompt's, `[R, D]` each.
    anchor_rows: Option<(Tensor, Tensor)>,
}

/// A re-steering's result: the deltas of the changed UNet tensors and what the run did (the
/// report's `final_parts["attention"]` is the attention term alone at the last step).
pub struct Resteered {
    /// Keys `unet.{name}`: the original values of the changed tensors.
    pub base: BTreeMap<String, Tensor>,
    pub deltas: BTreeMap<String, Tensor>,
    pub report: TrainReport,
}

/// The tokenizer and text encoder with the concepts' learned tokens (if any) added.
struct TextSide<'a> {
    tokenizer: ClipTokenizer,
    text_encoder: &'a ClipTextModel,
    added: Option<AddedTokens>,
    /// Per concept: what stands for it in prompts (its name, or its learned tokens, and with
    /// `also_name` its name too).
    concept_texts: Vec<Vec<String>>,
}

impl<'a> TextSide<'a> {
    fn new(model: &'a Model, cfg: &ResteerConfig) -> Result<Self, ResteerError> {
        let mut tokenizer = model.tokenizer.clone();
        let (mut embeddings, mut names, mut concept_texts) = (Vec::new(), Vec::new(), Vec::new());
        for c in &cfg.multi_concept {
            match &c.embedding {
                Some(path) => {
                    let e = TokenEmbedding::load(path)?;
                    let mut texts = vec![e.tokens.join(" ")];
                    if cfg.also_name {
                        texts.push(c.name.clone());
                    }
                    concept_texts.push(texts);
                    embeddings.push(e);
                    names.push(path.display().to_string());
                }
                None => concept_texts.push(vec![c.name.clone()]),
            }
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
        })
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

fn prepare(
    model: &Model,
    text: &TextSide,
    index: usize,
    cfg: &ResteerConfig,
    resolution: usize,
    device: &Device,
) -> Result<PreparedConcept, ResteerError> {
    let spec = &cfg.multi_concept[index];
    let mut prompts = Vec::new();
    let mut anchors = Vec::new();
    let texts = &text.concept_texts[index];
    for (template, concept) in cfg
        .templates(spec.kind)
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
        if cfg.anchor_weight > 0.0 {
            let anchor_text = anchor_prompt(template, &cfg.anchor);
            let ids = Tensor::new(text.tokenizer.encode(&anchor_text)?, device)?.unsqueeze(0)?;
            anchors.push(text.encode(&ids)?);
        }
        prompts.push((p, context, positions));
    }
    let anchor_rows = if anchors.is_empty() {
        None
    } else {
        let flat = |t: Tensor| -> Result<Tensor, ResteerError> {
            let (b, n, d) = t.dims3()?;
            Ok(t.reshape((b * n, d))?)
        };
        let contexts: Vec<Tensor> = prompts.iter().map(|(_, c, _)| c.clone()).collect();
        Some((
            flat(Tensor::cat(&contexts, 0)?)?,
            flat(Tensor::cat(&anchors, 0)?)?,
        ))
    };
    let images = TrainingImages::load(&spec.images, spec.masks.as_deref())?;
    let factor = model.vae.downscale_factor();
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
            latents.push(model.vae.encode(&px)?.detach());
            if let (Some(out), Some(m)) = (masks.as_mut(), ex.mask.as_ref()) {
                let m = if flip { m.flip(&[3])? } else { m.clone() };
                let (h, w) = (resolution / factor, resolution / factor);
                out.push(resize_mask(&m, h, w)?);
            }
        }
    }
    Ok(PreparedConcept {
        prompts,
        latents,
        masks,
        anchor_rows,
    })
}

/// Preserved contexts `[P·77, context_dim]` and the K/V delta names they constrain.
fn preserved_contexts(
    text: &TextSide,
    cfg: &ResteerConfig,
    device: &Device,
) -> Result<Option<Tensor>, ResteerError> {
    if cfg.preserve_weight <= 0.0 || cfg.preserve_prompts.is_empty() {
        return Ok(None);
    }
    // A prompt naming a concept being forgotten is not preserved (one list serves every concept).
    let names: Vec<String> = cfg
        .multi_concept
        .iter()
        .map(|c| c.name.to_lowercase())
        .collect();
    let names_concept = |p: &str| {
        let words: Vec<String> = p
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_string)
            .collect();
        names.iter().any(|n| {
            let n: Vec<&str> = n.split(|c: char| !c.is_alphanumeric()).collect();
            words
                .windows(n.len())
                .any(|w| w.iter().zip(&n).all(|(a, b)| a == b))
        })
    };
    let prompts: Vec<&str> = cfg
        .preserve_prompts
        .iter()
        .map(String::as_str)
        .filter(|p| !names_concept(p))
        .collect();
    if prompts.is_empty() {
        return Ok(None);
    }
    let ids = text.tokenizer.encode_batch(&prompts)?;
    let ids = Tensor::new(ids, device)?;
    let ctx = text.encode(&ids)?;
    let (p, n, d) = ctx.dims3()?;
    Ok(Some(ctx.reshape((p * n, d))?))
}

/// Re-steering's per-step loss: per concept a batch of its latents noised at random
/// timesteps under one of its prompts, the attention energy on its tokens (L2 norm over every
/// `attn2`, masked if masks are given), plus the K/V preservation and anchor terms.
struct Resteering<'a> {
    model: &'a Model,
    cfg: &'a ResteerConfig,
    concepts: Vec<PreparedConcept>,
    trainable: Trainable,
    kv_names: Vec<String>,
    preserve: Option<Tensor>,
    /// Per anchored concept: its context rows and the anchor offsets per K/V delta.
    anchored: Vec<(Tensor, Vec<Tensor>)>,
    anchor_weight: f64,
    timesteps: (usize, usize),
    device: Device,
}

impl Objective for Resteering<'_> {
    fn loss(&mut self, _step: usize, rng: &mut NoiseRng) -> Result<StepLoss, TrainError> {
        let (cfg, model, device) = (self.cfg, self.model, &self.device);
        let scaling = model.vae.scaling_factor();
        let unet = self.trainable.unet(device)?;
        let mut attention_loss: Option<Tensor> = None;
        for c in &self.concepts {
            let (_, context, positions) = &c.prompts[rng.below(0, c.prompts.len())];
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
            let recorder = AttentionRecorder::new();
            unet.forward_with_probe(&noisy.x_t, &noisy.t, &ctx, Some(&recorder))?;
            let mask = if masks.is_empty() {
                None
            } else {
                Some(Tensor::cat(&masks, 0)?)
            };
            let energy = attention_energy(&recorder.take(), positions, mask.as_ref())?;
            let norm = energy.sqrt()?;
            attention_loss = Some(match attention_loss {
                None => norm,
                Some(l) => (l + norm)?,
            });
        }
        let Some(attention_loss) = attention_loss else {
            return Err(TrainError::Input("no concept to re-steer".into()));
        };
        let mut loss = attention_loss.clone();
        if self.preserve.is_some() || !self.anchored.is_empty() {
            let deltas = self
                .kv_names
                .iter()
                .filter_map(|n| self.trainable.delta(n).transpose())
                .collect::<candle_core::Result<Vec<_>>>()?;
            if let (Some(contexts), false) = (&self.preserve, deltas.is_empty()) {
                loss = (loss + (preservation(contexts, &deltas)? * cfg.preserve_weight)?)?;
            }
            for (rows, offsets) in &self.anchored {
                loss = (loss + (anchoring(rows, &deltas, offsets)? * self.anchor_weight)?)?;
            }
        }
        Ok(StepLoss {
            total: loss,
            parts: vec![("attention", attention_loss)],
        })
    }
}

pub fn resteer(
    model: &Model,
    cfg: &ResteerConfig,
    device: &Device,
    run: RunControl,
) -> Result<Resteered, ResteerError> {
    let set = cfg.param_set();
    cfg.validate().map_err(ResteerError::Input)?;
    let resolution = training_resolution(cfg.resolution, &model.unet_config, &model.vae)?;
    let timesteps = timestep_range(cfg.timesteps, &model.schedule)?;
    let text = TextSide::new(model, cfg)?;
    let concepts = (0..cfg.multi_concept.len())
        .map(|i| prepare(model, &text, i, cfg, resolution, device))
        .collect::<Result<Vec<_>, _>>()?;
    let preserve = preserved_contexts(&text, cfg, device)?;
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
    // The anchor term is the mean of the concepts' terms: one preservation list then holds
    // several concepts as firmly as one (summed, three concepts broke kiki in the toy world:
    // BENCHMARKS.md#joint-runs-the-anchor-term-is-a-mean).
    let anchor_weight = cfg.anchor_weight / anchored.len().max(1) as f64;
    if cfg.solve_anchor {
        let rows: Vec<(Tensor, Tensor)> = concepts
            .iter()
            .filter_map(|c| c.anchor_rows.clone())
            .collect();
        let map =
            anchor_solution_map(&rows, preserve.as_ref(), anchor_weight, cfg.preserve_weight)?;
        for (name, w) in kv_names.iter().zip(&kv_base) {
            if !trainable.set_full(name, &w.matmul(&map)?)? {
                return Err(ResteerError::Input(format!(
                    "`solve_anchor` needs a full delta for {name}"
                )));
            }
        }
    }
    let vars = trainable.vars();
    let plan = cfg.adam.schedule(
        cfg.max_train_steps,
        cfg.seed,
        cfg.learning_rate,
        cfg.adam_weight_decay,
    );
    let mut objective = Resteering {
        model,
        cfg,
        concepts,
        trainable,
        kv_names,
        preserve,
        anchored,
        anchor_weight,
        timesteps,
        device: device.clone(),
    };
    let report = train(&vars, &plan, cfg, run, &mut objective)?;
    let (base, deltas) = objective.trainable.export()?;
    Ok(Resteered {
        base,
        deltas,
        report,
    })
}
