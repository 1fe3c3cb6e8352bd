//! The inversion loop: VAE, text encoder and UNet frozen; only the new tokens' rows train, on
//! the denoising loss of the concept's images under prompts that contain them.
use crate::config::InvertConfig;
use crate::init::Initializer;
use crate::InvertError;
use candle_core::{DType, Device, Tensor, Var};
use fmn_core::Validate;
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{token_table_fingerprint, EmbeddingMeta, TokenEmbedding};
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::probes::resize_mask;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::images::TrainingImages;
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::scaffold::{
    sample_latent, timestep_range, train, training_resolution, NoisyLatents, Objective, RunControl,
    StepLoss, TrainError, TrainReport,
};

/// An inversion's result: the learned tokens, and what the run did.
pub struct Inverted {
    pub embedding: TokenEmbedding,
    pub report: TrainReport,
    /// The tokens' vector norms at the end.
    pub norms: Vec<f64>,
    /// Images of the concept trained on.
    pub images: usize,
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

/// The inversion's per-step loss: a batch of the concept's images (augmented, VAE-encoded,
/// noised), prompts from the kind's templates with the placeholder tokens, and the denoising
/// loss (mask-weighted) as a function of the new tokens' rows.
struct Inversion<'a> {
    model: &'a StableDiffusion,
    cfg: &'a InvertConfig,
    images: TrainingImages,
    tokenizer: ClipTokenizer,
    rows: Var,
    placeholder_text: String,
    resolution: u32,
    timesteps: (usize, usize),
    schedule: NoiseSchedule,
    device: Device,
}

impl Objective for Inversion<'_> {
    fn loss(&mut self, _step: usize, rng: &mut NoiseRng) -> Result<StepLoss, TrainError> {
        let (cfg, model) = (self.cfg, self.model);
        let templates = cfg.templates();
        let scaling = model.vae.scaling_factor();
        let (mut x0, mut masks, mut ids, mut ts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..cfg.train_batch_size {
            let i = rng.below(0, self.images.len());
            let ex = self.images.example(
                i,
                self.resolution,
                cfg.augment.then_some(&mut *rng),
                &self.device,
            )?;
            let posterior = model.vae.encode(&ex.pixels)?;
            x0.push(sample_latent(&posterior, scaling, rng)?);
            if let Some(m) = ex.mask {
                masks.push(m);
            }
            let template = &templates[rng.below(0, templates.len())];
            let prompt = template.replacen("{}", &self.placeholder_text, 1);
            ids.push(Tensor::new(
                self.tokenizer.encode(&prompt)?.as_slice(),
                &self.device,
            )?);
            ts.push(rng.below(self.timesteps.0, self.timesteps.1));
        }
        let x0 = Tensor::cat(&x0, 0)?;
        let noisy = NoisyLatents::draw(&self.schedule, &x0, &ts, rng)?;
        let (_, _, h, w) = noisy.x_t.dims4()?;
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
            self.rows.as_tensor(),
            &Denoising {
                x_t: &noisy.x_t,
                t: &noisy.t,
                target: &noisy.target,
                weights: weights.as_ref(),
            },
        )?;
        Ok(loss.into())
    }

    fn after_update(&mut self, step: usize) -> Result<(), TrainError> {
        if self.cfg.clip_ti_decay {
            let lambda = (100.0 * self.cfg.learning_rate_ti).min(1.0);
            let decayed = decay_norms(self.rows.as_tensor(), self.cfg.ti_norm_target, lambda)?;
            self.rows.set(&decayed)?;
        }
        let largest = self
            .rows
            .as_tensor()
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if !largest.is_finite() {
            return Err(TrainError::Diverged {
                step,
                value: largest,
            });
        }
        Ok(())
    }
}

pub fn invert(
    model: &StableDiffusion,
    cfg: &InvertConfig,
    device: &Device,
    run: RunControl,
) -> Result<Inverted, InvertError> {
    cfg.validate().map_err(InvertError::Input)?;
    let (tokens, init_texts) = cfg.tokens_and_initializers().map_err(InvertError::Input)?;
    let inits = init_texts
        .iter()
        .map(|t| Initializer::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(images_dir) = cfg.instance_data_dir.as_deref() else {
        return Err(InvertError::Input("no images given".into()));
    };
    let images = TrainingImages::load(images_dir, cfg.mask_dir.as_deref())?;
    if images.is_empty() {
        return Err(InvertError::Input(format!(
            "{}: no images ({}) in the folder",
            images_dir.display(),
            fmn_core::images::IMAGE_EXTENSIONS.join(", ")
        )));
    }
    let resolution = training_resolution(cfg.resolution, model.unet.config(), &model.vae)?;
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
    let schedule = NoiseSchedule::from_config(&model.scheduler)?;
    let timesteps = timestep_range(cfg.timesteps, &schedule)?;
    let n_images = images.len();
    let mut inversion = Inversion {
        model,
        cfg,
        images,
        tokenizer,
        rows: var.clone(),
        placeholder_text: tokens.join(" "),
        resolution: resolution as u32,
        timesteps,
        schedule,
        device: device.clone(),
    };
    let plan = cfg.adam.schedule(
        cfg.max_train_steps_ti,
        cfg.seed,
        cfg.learning_rate_ti,
        cfg.weight_decay_ti,
    );
    let report = train(&vars, &plan, cfg, run, &mut inversion)?;
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
            settings: serde_json::to_value(cfg).map_err(|e| InvertError::Input(e.to_string()))?,
            fmn_version: Some(fmn_core::VERSION.into()),
        },
    )?;
    Ok(Inverted {
        embedding,
        report,
        norms,
        images: n_images,
    })
}
