//! The inversion loop: VAE, text encoder and UNet frozen; only the new tokens' rows train, on
//! the denoising loss of the concept's images under prompts that contain them.
use crate::config::InvertConfig;
use crate::init::Initializer;
use crate::InvertError;
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{token_table_fingerprint, EmbeddingMeta, TokenEmbedding};
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::checkpoint::RunOptions;
use fmn_sd::train::images::{resize_mask, TrainingImages};
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::optim::{AdamW, AdamWConfig};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct InvertReport {
    pub steps: usize,
    /// Mean loss of the first and the last (up to) 20 steps of this run.
    pub first_loss: f64,
    pub final_loss: f64,
    /// The tokens' vector norms at the end.
    pub norms: Vec<f64>,
    pub seconds: f64,
    pub images: usize,
}

pub struct Inverted {
    pub embedding: TokenEmbedding,
    pub report: InvertReport,
}

/// The mask weights of the loss at latent size: `(mask + floor)`, normalised to mean 1 over
/// the batch, as the original's inversion loss. `masks [B, 1, H, W]` -> `[B, 1, h, w]`.
pub fn loss_weights(masks: &Tensor, h: usize, w: usize, floor: f64) -> Result<Tensor, InvertError> {
    let m = (resize_mask(masks, h, w)? + floor)?;
    let mean = m.mean_all()?;
    Ok(m.broadcast_div(&mean)?)
}

/// Mean of `(w · (pred − target))²` (plain MSE without weights).
pub fn denoising_loss(
    pred: &Tensor,
    target: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor, InvertError> {
    let diff = (pred - target)?;
    let diff = match weights {
        Some(w) => diff.broadcast_mul(w)?,
        None => diff,
    };
    Ok(diff.sqr()?.mean_all()?)
}

/// One batch of the denoising task: noisy latents `[B, C, h, w]`, timesteps `[B]`, the
/// regression target `[B, C, h, w]` and optional loss weights `[B, 1, h, w]`.
pub struct Denoising<'a> {
    pub x_t: &'a Tensor,
    pub t: &'a Tensor,
    pub target: &'a Tensor,
    pub weights: Option<&'a Tensor>,
}

/// The inversion loss as a function of the new tokens' rows `[n, D]` (ids `[B, 77]` may use
/// ids `vocab_size + j` for row `j`); differentiable with respect to `rows`.
pub fn objective(
    model: &StableDiffusion,
    ids: &Tensor,
    rows: &Tensor,
    batch: &Denoising,
) -> Result<Tensor, InvertError> {
    let context = model
        .text_encoder
        .forward_with_token_embeddings(ids, rows)?;
    let pred = model.unet.forward(batch.x_t, batch.t, &context)?;
    denoising_loss(&pred, batch.target, batch.weights)
}

/// Rescales each row to `norm + λ (target − norm)` (`clip_ti_decay`).
pub fn decay_norms(rows: &Tensor, target: f64, lambda: f64) -> Result<Tensor, InvertError> {
    let norms = rows.sqr()?.sum_keepdim(1)?.sqrt()?;
    let new = ((&norms * (1.0 - lambda))? + lambda * target)?;
    Ok(rows.broadcast_mul(&new.broadcast_div(&norms.clamp(1e-12, f64::MAX)?)?)?)
}

pub fn invert(
    model: &StableDiffusion,
    cfg: &InvertConfig,
    device: &Device,
    opts: RunOptions,
) -> Result<Inverted, InvertError> {
    cfg.validate().map_err(InvertError::Input)?;
    let (tokens, init_texts) = cfg.tokens_and_initializers().map_err(InvertError::Input)?;
    let inits = init_texts
        .iter()
        .map(|t| Initializer::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let images_dir = cfg.instance_data_dir.as_deref().expect("validated");
    let images = TrainingImages::load(images_dir, cfg.mask_dir.as_deref())?;
    if images.is_empty() {
        return Err(InvertError::Input(format!(
            "{}: no images (png, jpg, webp, ...) in the folder",
            images_dir.display()
        )));
    }
    let factor = model.vae.downscale_factor();
    let resolution = cfg
        .resolution
        .unwrap_or(model.unet.config().sample_size.unwrap_or(64) * factor);
    if resolution == 0 || !resolution.is_multiple_of(factor) {
        return Err(InvertError::Input(format!(
            "resolution {resolution} is not a multiple of the VAE factor {factor}"
        )));
    }
    let text_encoder = &model.text_encoder;
    let mut tokenizer = model.tokenizer.clone();
    let mut rng = NoiseRng::new(cfg.seed ^ 0x70c3);
    let rows = tokens
        .iter()
        .zip(&inits)
        .map(|(tok, init)| init.vector(tok, &tokenizer, text_encoder, &mut rng))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let ids = tokenizer.add_tokens(&refs).map_err(|e| {
        InvertError::Input(format!(
            "placeholder tokens: {e}; choose tokens the tokenizer does not know, e.g. <s1>"
        ))
    })?;
    if ids.first().map(|&i| i as usize) != Some(text_encoder.vocab_size()) {
        return Err(InvertError::Input(format!(
            "the tokenizer has {} tokens but the text encoder's table {}; cannot add tokens",
            tokenizer.vocab_size() - tokens.len(),
            text_encoder.vocab_size()
        )));
    }
    let var = Var::from_tensor(&Tensor::stack(&rows, 0)?)?;
    let vars = vec![("embedding".to_string(), var.clone())];
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: cfg.learning_rate_ti,
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay_ti,
        },
    )?;
    let checkpoints = opts.schedule(serde_json::to_value(cfg).unwrap_or_default());
    let start = checkpoints.start(&vars, &mut opt)?;
    let schedule = NoiseSchedule::from_config(&model.scheduler)?;
    let (t_lo, t_hi) = (
        cfg.timesteps[0],
        cfg.timesteps[1].min(schedule.num_train_timesteps()),
    );
    if t_lo >= t_hi {
        return Err(InvertError::Input(format!(
            "`timesteps` [{}, {}) lies outside the model's {} training timesteps",
            cfg.timesteps[0],
            cfg.timesteps[1],
            schedule.num_train_timesteps()
        )));
    }
    let placeholder_text = tokens.join(" ");
    let templates = cfg.templates();
    let scaling = model.vae.scaling_factor();
    let lambda = (100.0 * cfg.learning_rate_ti).min(1.0);
    let started = std::time::Instant::now();
    let mut losses = Vec::new();
    for step in start..cfg.max_train_steps_ti {
        let mut rng = NoiseRng::new(
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(step as u64),
        );
        let (mut x0, mut masks, mut ids, mut ts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..cfg.train_batch_size {
            let i = rng.below(0, images.len());
            let ex = images.example(
                i,
                resolution as u32,
                cfg.augment.then_some(&mut rng),
                device,
            )?;
            let dist = model.vae.encode(&ex.pixels)?;
            let eps = rng.randn(dist.mean().dims(), device)?;
            x0.push(((dist.mean() + (dist.std() * eps)?)? * scaling)?.detach());
            if let Some(m) = ex.mask {
                masks.push(m);
            }
            let prompt =
                templates[rng.below(0, templates.len())].replacen("{}", &placeholder_text, 1);
            ids.push(Tensor::new(tokenizer.encode(&prompt)?.as_slice(), device)?);
            ts.push(rng.below(t_lo, t_hi));
        }
        let x0 = Tensor::cat(&x0, 0)?;
        let noise = rng.randn(x0.dims(), device)?;
        let x_t = schedule.add_noise(&x0, &noise, &ts)?;
        let target = schedule.target(&x0, &noise, &ts)?;
        let t = Tensor::new(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), device)?;
        let (_, _, h, w) = x_t.dims4()?;
        let weights = if masks.is_empty() {
            None
        } else {
            Some(loss_weights(
                &Tensor::cat(&masks, 0)?,
                h,
                w,
                cfg.mask_floor,
            )?)
        };
        let loss = objective(
            model,
            &Tensor::stack(&ids, 0)?,
            var.as_tensor(),
            &Denoising {
                x_t: &x_t,
                t: &t,
                target: &target,
                weights: weights.as_ref(),
            },
        )?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(InvertError::Diverged { step, value });
        }
        let grads = loss.backward()?;
        let clip = (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm);
        opt.step(&grads, clip)
            .map_err(|e| InvertError::Input(format!("step {step}: {e}")))?;
        if cfg.clip_ti_decay {
            var.set(&decay_norms(var.as_tensor(), cfg.ti_norm_target, lambda)?)?;
        }
        let rows_ok = var
            .as_tensor()
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !rows_ok.is_finite() {
            return Err(InvertError::Diverged {
                step,
                value: rows_ok,
            });
        }
        losses.push(value);
        (opts.on_step)(step, value);
        checkpoints.after_step(step + 1, cfg.max_train_steps_ti, &vars, &opt)?;
    }
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let k = losses.len().min(20);
    let rows = var.as_tensor().detach();
    let norms = rows
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let embedding = TokenEmbedding::new(
        tokens,
        rows,
        EmbeddingMeta {
            source: "fmn".into(),
            initializers: init_texts,
            base_fingerprint: Some(token_table_fingerprint(text_encoder)?),
            settings: serde_json::to_value(cfg).unwrap_or_default(),
            fmn_version: Some(fmn_core::VERSION.into()),
        },
    )?;
    Ok(Inverted {
        embedding,
        report: InvertReport {
            steps: cfg.max_train_steps_ti,
            first_loss: mean(&losses[..k]),
            final_loss: mean(&losses[losses.len() - k..]),
            norms,
            seconds: started.elapsed().as_secs_f64(),
            images: images.len(),
        },
    })
}
