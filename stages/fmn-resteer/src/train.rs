//! The re-steering loop: frozen VAE and text encoder, UNet deltas trained so that the concept's
//! tokens receive no cross-attention.
use crate::config::ResteerConfig;
use crate::loss::{anchor_offsets, anchoring, attention_energy, preservation};
use crate::params::Trainable;
use crate::prompts::{anchor_prompt, concept_prompt, ConceptPrompt};
use crate::solve::anchor_solution_map;
use crate::ResteerError;
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{AddedTokens, TokenEmbedding};
use fmn_sd::io::source::ModelSource;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::ClipTextModel;
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::UNetConfig;
use fmn_sd::models::vae::AutoencoderKL;
use fmn_sd::train::checkpoint::RunOptions;
use fmn_sd::train::images::{resize_mask, TrainingImages};
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::optim::{AdamW, AdamWConfig};
use serde::Serialize;
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
    /// Per image (and its mirror image): latent mean and std `[1, C, h, w]`.
    latents: Vec<(Tensor, Tensor)>,
    /// Per entry of `latents`: the mask at the latent size `[1, 1, h, w]`.
    masks: Option<Vec<Tensor>>,
    /// With `anchor_weight`: every prompt's context rows and its anchor prompt's, `[R, D]` each.
    anchor_rows: Option<(Tensor, Tensor)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResteerReport {
    pub steps: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    /// The attention term alone at the last step (the loss without the preservation term).
    pub final_attention_loss: f64,
    pub seconds: f64,
    pub tensors: usize,
    pub trained_values: usize,
}

pub struct Resteered {
    /// Keys `unet.{name}`: the original values of the changed tensors.
    pub base: BTreeMap<String, Tensor>,
    pub deltas: BTreeMap<String, Tensor>,
    pub report: ResteerReport,
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
            let dist = model.vae.encode(&px)?;
            latents.push((dist.mean().detach(), dist.std().detach()));
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

pub fn resteer(
    model: &Model,
    cfg: &ResteerConfig,
    device: &Device,
    opts: RunOptions,
) -> Result<Resteered, ResteerError> {
    cfg.validate().map_err(ResteerError::Input)?;
    let set = cfg.param_set();
    let factor = model.vae.downscale_factor();
    let resolution = cfg
        .resolution
        .unwrap_or(model.unet_config.sample_size.unwrap_or(64) * factor);
    if resolution == 0 || !resolution.is_multiple_of(factor) {
        return Err(ResteerError::Input(format!(
            "resolution {resolution} is not a multiple of the VAE factor {factor}"
        )));
    }
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
    // several concepts as firmly as one (summed, three concepts broke kiki in the toy world;
    // BENCHMARKS.md).
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
    let trained_values = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: cfg.learning_rate,
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.adam_weight_decay,
        },
    )?;
    let checkpoints = opts.schedule(serde_json::to_value(cfg).unwrap_or_default());
    let start = checkpoints.start(&vars, &mut opt)?;
    let scaling = model.vae.scaling_factor();
    let train_steps = model.schedule.num_train_timesteps();
    let (t_lo, t_hi) = (cfg.timesteps[0], cfg.timesteps[1].min(train_steps));
    if t_lo >= t_hi {
        return Err(ResteerError::Input(format!(
            "`timesteps` [{}, {}) lies outside the model's {train_steps} training timesteps",
            cfg.timesteps[0], cfg.timesteps[1]
        )));
    }
    let started = std::time::Instant::now();
    let (mut first, mut last, mut last_attention) = (f64::NAN, f64::NAN, f64::NAN);
    for step in start..cfg.max_train_steps {
        let mut rng = NoiseRng::new(
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(step as u64),
        );
        let unet = trainable.unet(device)?;
        let mut attention_loss: Option<Tensor> = None;
        for c in &concepts {
            let (_, context, positions) = &c.prompts[rng.below(0, c.prompts.len())];
            let mut x0 = Vec::new();
            let mut masks = Vec::new();
            let mut ts = Vec::new();
            for _ in 0..cfg.train_batch_size {
                let i = rng.below(0, c.latents.len());
                let (mean, std) = &c.latents[i];
                let eps = rng.randn(mean.dims(), device)?;
                x0.push(((mean + (std * eps)?)? * scaling)?);
                if let Some(m) = &c.masks {
                    masks.push(m[i].clone());
                }
                ts.push(rng.below(t_lo, t_hi));
            }
            let x0 = Tensor::cat(&x0, 0)?;
            let noise = rng.randn(x0.dims(), device)?;
            let x_t = model.schedule.add_noise(&x0, &noise, &ts)?;
            let t = Tensor::new(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), device)?;
            let ctx = context.repeat((cfg.train_batch_size, 1, 1))?;
            let recorder = AttentionRecorder::new();
            unet.forward_with_probe(&x_t, &t, &ctx, Some(&recorder))?;
            let mask = if masks.is_empty() {
                None
            } else {
                Some(Tensor::cat(&masks, 0)?)
            };
            let (_, _, h, w) = x_t.dims4()?;
            let energy = attention_energy(&recorder.take(), positions, mask.as_ref(), (h, w))?;
            let norm = energy.sqrt()?;
            attention_loss = Some(match attention_loss {
                None => norm,
                Some(l) => (l + norm)?,
            });
        }
        let attention_loss = attention_loss.expect("at least one concept");
        let mut loss = attention_loss.clone();
        if preserve.is_some() || !anchored.is_empty() {
            let deltas = kv_names
                .iter()
                .filter_map(|n| trainable.delta(n).transpose())
                .collect::<candle_core::Result<Vec<_>>>()?;
            if let (Some(contexts), false) = (&preserve, deltas.is_empty()) {
                loss = (loss + (preservation(contexts, &deltas)? * cfg.preserve_weight)?)?;
            }
            for (rows, offsets) in &anchored {
                loss = (loss + (anchoring(rows, &deltas, offsets)? * anchor_weight)?)?;
            }
        }
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(ResteerError::Diverged { step, value });
        }
        let grads = loss.backward()?;
        opt.step(&grads, Some(cfg.max_grad_norm))
            .map_err(|e| ResteerError::Input(format!("step {step}: {e}")))?;
        if step == start {
            first = value;
        }
        last = value;
        last_attention = attention_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        (opts.on_step)(step, value);
        checkpoints.after_step(step + 1, cfg.max_train_steps, &vars, &opt)?;
    }
    let (base, deltas) = trainable.export()?;
    Ok(Resteered {
        report: ResteerReport {
            steps: cfg.max_train_steps,
            first_loss: first,
            final_loss: last,
            final_attention_loss: last_attention,
            seconds: started.elapsed().as_secs_f64(),
            tensors: deltas.len(),
            trained_values,
        },
        base,
        deltas,
    })
}
