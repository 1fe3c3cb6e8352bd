//! The training scaffold every fmn training run stands on (textual inversion, re-steering, the
//! attack): AdamW over the stage's variables, one seeded generator per step, a stop with
//! nothing written when the loss or its gradient stops being finite, checkpoints and resume,
//! progress, and one report. A stage supplies only what is its own — which tensors train and
//! the loss of a step ([`Objective`]) — and the inputs every diffusion training checks once
//! ([`training_resolution`], [`timestep_range`]) and draws per step ([`NoisyLatents`]).
use crate::models::unet::UNetConfig;
use crate::models::vae::{AutoencoderKL, DiagonalGaussian};
use crate::train::checkpoint::{CheckpointDir, RunProgress};
use crate::train::noise_schedule::NoiseSchedule;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::SdError;
use candle_core::{DType, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The window of [`TrainReport::early_mean_loss`] and [`TrainReport::late_mean_loss`].
pub const MEAN_WINDOW: usize = 20;

/// The one checkpoint stage of a single-stage run.
const STAGE: &str = "train";

/// What can stop a training run; the error type of the training stages.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Inputs that do not make sense (the message names the setting, file or tensor).
    #[error("{0}")]
    Input(String),
    #[error(
        "the loss became {value} at step {step}; nothing was written (try a smaller learning rate)"
    )]
    Diverged { step: usize, value: f64 },
    #[error(transparent)]
    Model(#[from] SdError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The settings every training run has, under the stage's own config keys.
pub struct CommonSettings<'a> {
    /// `(key, value)` of the step count and of the batch size.
    pub steps: (&'a str, usize),
    pub batch: (&'a str, usize),
    /// `(key, value)` of the learning rate.
    pub learning_rate: (&'a str, f64),
    /// The `timesteps` range `[lo, hi)`.
    pub timesteps: [usize; 2],
    pub adam: &'a AdamKeys,
}

impl CommonSettings<'_> {
    /// What is wrong with them, naming the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, n) in [self.steps, self.batch] {
            if n == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        let (key, lr) = self.learning_rate;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("`{key}` must be positive, got {lr}"));
        }
        let [lo, hi] = self.timesteps;
        if lo >= hi {
            return Err(format!("`timesteps` [{lo}, {hi}) is empty"));
        }
        self.adam.check()
    }
}

/// The optimiser keys every training stage's config has, under the same names
/// (`#[serde(flatten)]` into the stage's config); the learning rate and weight decay stay the
/// stage's own keys, as in the original's configs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamKeys {
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Gradient-norm clipping (0: none).
    pub max_grad_norm: f64,
}

impl Default for AdamKeys {
    /// torch.optim.AdamW's moments, no clipping.
    fn default() -> Self {
        let torch = AdamWConfig::default();
        Self {
            adam_beta1: torch.beta1,
            adam_beta2: torch.beta2,
            adam_epsilon: torch.eps,
            max_grad_norm: 0.0,
        }
    }
}

impl AdamKeys {
    /// What is wrong with them, naming the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(format!("`{key}` must be in [0, 1), got {beta}"));
            }
        }
        if !(self.adam_epsilon > 0.0 && self.adam_epsilon.is_finite()) {
            return Err(format!(
                "`adam_epsilon` must be positive, got {}",
                self.adam_epsilon
            ));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(format!(
                "`max_grad_norm` must be zero (no clipping) or positive, got {}",
                self.max_grad_norm
            ));
        }
        Ok(())
    }

    /// The run's schedule with the stage's step count, seed, learning rate and weight decay.
    pub fn schedule(&self, steps: usize, seed: u64, lr: f64, weight_decay: f64) -> Schedule {
        Schedule {
            steps,
            seed,
            adamw: AdamWConfig {
                lr,
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_epsilon,
                weight_decay,
            },
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
        }
    }
}

/// How a run trains: its length, seed and optimiser.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub seed: u64,
    pub adamw: AdamWConfig,
    /// Gradient-norm clipping (`torch.nn.utils.clip_grad_norm_`); `None`: none.
    pub max_grad_norm: Option<f64>,
}

/// A finished step, as reported to [`RunControl::on_step`].
#[derive(Debug, Clone, Copy)]
pub struct StepRecord {
    /// Index of the step (from 0).
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
}

/// Where a run keeps its checkpoints and whom it tells about each step.
pub struct RunControl<'a> {
    /// `None`: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every N finished steps (0: never; never after the last step, whose result the
    /// stage writes itself).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `checkpoint_dir`, if there is one.
    pub resume: bool,
    pub on_step: Box<dyn FnMut(&StepRecord) + 'a>,
}

impl RunControl<'_> {
    /// No checkpoints, no reports.
    pub fn silent() -> RunControl<'static> {
        RunControl {
            checkpoint_dir: None,
            checkpoint_every: 0,
            resume: false,
            on_step: Box::new(|_: &StepRecord| {}),
        }
    }
}

/// One step's loss: the scalar that is minimised, and named parts of it worth reporting.
pub struct StepLoss {
    pub total: Tensor,
    pub parts: Vec<(&'static str, Tensor)>,
}

impl From<Tensor> for StepLoss {
    fn from(total: Tensor) -> Self {
        Self {
            total,
            parts: Vec::new(),
        }
    }
}

/// What a stage trains on: the loss of each step, built on the trained variables.
pub trait Objective {
    /// The loss of `step`, drawn with `rng`: the step's own generator, seeded from the run's
    /// seed and the step, so that a resumed run draws what an uninterrupted one would.
    fn loss(&mut self, step: usize, rng: &mut NoiseRng) -> Result<StepLoss, TrainError>;

    /// Called after each optimiser update (e.g. textual inversion's norm decay).
    fn after_update(&mut self, _step: usize) -> Result<(), TrainError> {
        Ok(())
    }

    /// Variables the objective changes itself from step to step (not trained by the optimiser,
    /// e.g. an attacker's token rows), saved with each checkpoint and restored on resume so
    /// that a resumed run goes on as an uninterrupted one would. Their names must differ from
    /// the trained variables'.
    fn state(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// What a run did. Each field means one thing in every stage.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The run's length (all steps, the resumed ones included).
    pub steps: usize,
    /// The step this process started from (0 unless it resumed a checkpoint).
    pub resumed_from: usize,
    /// The loss of the first step this process computed, and of the last step.
    pub first_loss: f64,
    pub final_loss: f64,
    /// Mean loss of the first and of the last (up to) [`MEAN_WINDOW`] steps this process
    /// computed: what a noisy loss (random timesteps) says of progress.
    pub early_mean_loss: f64,
    pub late_mean_loss: f64,
    /// Each named part of the loss at the last step.
    pub final_parts: BTreeMap<String, f64>,
    /// Values in the trained variables.
    pub trained_values: usize,
    pub seconds: f64,
}

/// The generator of `step` in a run seeded with `seed`.
pub fn step_rng(seed: u64, step: usize) -> NoiseRng {
    NoiseRng::new(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(step as u64),
    )
}

fn scalar(t: &Tensor) -> Result<f64, TrainError> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Trains `vars` on `objective` for `schedule.steps` steps. `settings` identify the run: a
/// checkpoint made with other settings is refused, never continued.
pub fn train(
    vars: &[(String, Var)],
    schedule: &Schedule,
    settings: &impl Serialize,
    mut run: RunControl,
    objective: &mut dyn Objective,
) -> Result<TrainReport, TrainError> {
    let settings =
        serde_json::to_value(settings).map_err(|e| TrainError::Input(format!("settings: {e}")))?;
    let mut opt = AdamW::new(vars.to_vec(), schedule.adamw)?;
    let checkpoints = run.checkpoint_dir.as_deref().map(CheckpointDir::new);
    // The trained variables, then the objective's own state: both are checkpointed.
    let saved: Vec<(String, Var)> = vars.iter().cloned().chain(objective.state()).collect();
    let mut start = 0;
    if let (Some(ck), true) = (&checkpoints, run.resume) {
        if let Some(progress) = ck.progress::<RunProgress>()? {
            progress.check(ck, &settings, schedule.steps)?;
            ck.load(STAGE, &saved, Some(&mut opt))?;
            tracing::info!(step = progress.step, "resuming");
            start = progress.step;
        }
    }
    let started = std::time::Instant::now();
    let mut losses = Vec::new();
    let mut final_parts = BTreeMap::new();
    for step in start..schedule.steps {
        let mut rng = step_rng(schedule.seed, step);
        let loss = objective.loss(step, &mut rng)?;
        let value = scalar(&loss.total)?;
        if !value.is_finite() {
            return Err(TrainError::Diverged { step, value });
        }
        let grads = loss.total.backward()?;
        match opt.step(&grads, schedule.max_grad_norm) {
            Err(SdError::NonFiniteGradient(value)) => {
                return Err(TrainError::Diverged { step, value })
            }
            other => other?,
        };
        objective.after_update(step)?;
        if step + 1 == schedule.steps {
            for (name, part) in &loss.parts {
                final_parts.insert(name.to_string(), scalar(part)?);
            }
        }
        losses.push(value);
        (run.on_step)(&StepRecord {
            step,
            steps: schedule.steps,
            loss: value,
        });
        let done = step + 1;
        if let Some(ck) = &checkpoints {
            if run.checkpoint_every > 0
                && done.is_multiple_of(run.checkpoint_every)
                && done < schedule.steps
            {
                ck.save(
                    STAGE,
                    &saved,
                    &opt,
                    &RunProgress {
                        step: done,
                        settings: settings.clone(),
                    },
                )?;
            }
        }
    }
    let k = losses.len().min(MEAN_WINDOW);
    Ok(TrainReport {
        steps: schedule.steps,
        resumed_from: start,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        final_loss: losses.last().copied().unwrap_or(f64::NAN),
        early_mean_loss: mean(&losses[..k]),
        late_mean_loss: mean(&losses[losses.len() - k..]),
        final_parts,
        trained_values: vars.iter().map(|(_, v)| v.elem_count()).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The training resolution in pixels: `requested`, else the UNet's sample size × the VAE
/// factor; it must be a positive multiple of the VAE factor.
pub fn training_resolution(
    requested: Option<usize>,
    unet: &UNetConfig,
    vae: &AutoencoderKL,
) -> Result<usize, SdError> {
    let factor = vae.downscale_factor();
    let resolution = requested.unwrap_or(unet.default_image_side(factor));
    if resolution == 0 || !resolution.is_multiple_of(factor) {
        return Err(SdError::Invalid(format!(
            "resolution {resolution} is not a multiple of the VAE factor {factor}"
        )));
    }
    Ok(resolution)
}

/// The timesteps `[lo, hi)` a run draws from: `requested`, cut to the model's training
/// timesteps; an empty range is an error naming the `timesteps` setting.
pub fn timestep_range(
    requested: [usize; 2],
    schedule: &NoiseSchedule,
) -> Result<(usize, usize), SdError> {
    let n = schedule.num_train_timesteps();
    let (lo, hi) = (requested[0], requested[1].min(n));
    if lo >= hi {
        return Err(SdError::Invalid(format!(
            "`timesteps` [{}, {}) lies outside the model's {n} training timesteps",
            requested[0], requested[1]
        )));
    }
    Ok((lo, hi))
}

/// A latent drawn from a VAE posterior `[1, C, h, w]` with one standard-normal draw from
/// `rng`, scaled by the VAE's `scaling` factor as the UNet sees it; outside the autograd graph.
pub fn sample_latent(
    posterior: &DiagonalGaussian,
    scaling: f64,
    rng: &mut NoiseRng,
) -> Result<Tensor, SdError> {
    Ok((posterior.sample(rng)? * scaling)?.detach())
}

/// A batch of the forward (noising) process: the noisy latents, their timesteps and the
/// regression target of the model's prediction type.
pub struct NoisyLatents {
    /// `[B, C, h, w]`
    pub x_t: Tensor,
    /// `[B]` (f32), as the UNet takes them.
    pub t: Tensor,
    /// `[B, C, h, w]`
    pub target: Tensor,
}

impl NoisyLatents {
    /// Noises `x0 [B, C, h, w]` to `timesteps` (one per row) with a draw from `rng`.
    pub fn draw(
        schedule: &NoiseSchedule,
        x0: &Tensor,
        timesteps: &[usize],
        rng: &mut NoiseRng,
    ) -> Result<Self, SdError> {
        let noise = rng.randn(x0.dims(), x0.device())?;
        Ok(Self {
            x_t: schedule.add_noise(x0, &noise, timesteps)?,
            t: Tensor::new(
                timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(),
                x0.device(),
            )?,
            target: schedule.target(x0, &noise, timesteps)?,
        })
    }
}
