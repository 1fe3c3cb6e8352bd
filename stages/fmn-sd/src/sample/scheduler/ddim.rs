//! DDIM (Song et al. 2021), as diffusers' `DDIMScheduler`.
//!
//! Config keys used (with `DDIMScheduler`'s defaults): `num_train_timesteps` 1000,
//! `beta_start` 0.0001, `beta_end` 0.02, `beta_schedule` "linear", `trained_betas`,
//! `clip_sample` **true**, `clip_sample_range` 1.0, `set_alpha_to_one` true, `steps_offset`
//! 0, `prediction_type` "epsilon" (also "v_prediction", "sample"), `timestep_spacing`
//! **"leading"**, `rescale_betas_zero_snr` false. `thresholding: true` is `Unsupported`
//! (dynamic thresholding is meant for pixel-space models); `dynamic_thresholding_ratio` and
//! `sample_max_value` only matter with it.
use super::betas::{timestep_out_of_range, BetaSchedule, ExtraSchedules};
use super::{
    check_num_steps, check_same_shape, check_step_index, int_timesteps, lincomb, to_dtype_of,
    PredictionType, Sampler, SamplerKind, SchedulerConfig, TimestepSpacing,
};
use crate::{Result, SdError};
use candle_core::{DType, Tensor};
use fmn_ops::noise::NoiseRng;

const CLASS: &str = "DDIMScheduler";

/// DDIM sampler. Deterministic with the default eta 0.
#[derive(Clone, Debug)]
pub struct Ddim {
    schedule: BetaSchedule,
    prediction_type: PredictionType,
    spacing: TimestepSpacing,
    clip_sample: Option<f64>,
    final_alpha_cumprod: f64,
    eta: f64,
    /// Integer train timesteps, descending.
    timesteps_int: Vec<usize>,
    timesteps: Vec<f64>,
}

impl Ddim {
    /// `DDIMScheduler.from_config(cfg)` + `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let r = cfg.reader(CLASS);
        let schedule = BetaSchedule::from_reader(&r, ExtraSchedules::None)?;
        let prediction_type = PredictionType::read(
            &r,
            &[
                PredictionType::Epsilon,
                PredictionType::VPrediction,
                PredictionType::Sample,
            ],
            false,
        )?;
        r.require_false("thresholding")?;
        let clip = r.bool("clip_sample", true)?;
        let clip_range = r.f64("clip_sample_range", 1.0)?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", true)?;
        let steps_offset = r.i64("steps_offset", 0)?;
        let spacing = TimestepSpacing::read(&r, "leading")?;

        check_num_steps(CLASS, num_inference_steps)?;
        let n_train = schedule.num_train_timesteps;
        if num_inference_steps > n_train {
            return Err(SdError::Invalid(format!(
                "{CLASS}: num_inference_steps {num_inference_steps} cannot exceed \
                 num_train_timesteps {n_train}"
            )));
        }
        let ints = int_timesteps(spacing, n_train, num_inference_steps, steps_offset);
        let timesteps_int = ints
            .iter()
            .map(|&t| {
                if t < 0 || t as usize >= n_train {
                    Err(timestep_out_of_range(
                        CLASS,
                        t,
                        n_train,
                        num_inference_steps,
                    ))
                } else {
                    Ok(t as usize)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0] as f64
        };
        Ok(Self {
            timesteps: timesteps_int.iter().map(|&t| t as f64).collect(),
            timesteps_int,
            schedule,
            prediction_type,
            spacing,
            clip_sample: clip.then_some(clip_range),
            final_alpha_cumprod,
            eta: 0.0,
        })
    }

    /// Sets eta (0: DDIM, deterministic; 1: DDPM-like). With eta > 0, [`Sampler::step`]
    /// draws `randn` noise of the sample's shape from its `rng` on every step.
    pub fn with_eta(mut self, eta: f64) -> Result<Self> {
        if !(eta >= 0.0 && eta.is_finite()) {
            return Err(SdError::Invalid(format!(
                "{CLASS}: eta must be finite and >= 0, got {eta}"
            )));
        }
        self.eta = eta;
        Ok(self)
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    pub fn timestep_spacing(&self) -> TimestepSpacing {
        self.spacing
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    /// One step with explicit variance noise (used when eta > 0; ignored otherwise), like
    /// diffusers' `step(..., eta, variance_noise=noise)`.
    pub fn step_with_noise(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.timesteps.len())?;
        check_same_shape(CLASS, model_output, sample, "model output")?;
        let n_train = self.schedule.num_train_timesteps;
        let t = self.timesteps_int[step_index];
        // diffusers steps back by num_train // n whatever the spacing.
        let prev_t = t as i64 - (n_train / self.timesteps.len()) as i64;
        let ac = &self.schedule.alphas_cumprod;
        let a_t = ac[t] as f64;
        let a_prev = if prev_t >= 0 {
            ac[prev_t as usize] as f64
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());

        let (mut x0, eps) = match self.prediction_type {
            PredictionType::Epsilon => (
                lincomb(&[(sample, 1.0 / sa), (model_output, -sb / sa)])?,
                model_output.to_dtype(DType::F32)?,
            ),
            PredictionType::Sample => {
                let x0 = model_output.to_dtype(DType::F32)?;
                let eps = lincomb(&[(sample, 1.0 / sb), (&x0, -sa / sb)])?;
                (x0, eps)
            }
            PredictionType::VPrediction => (
                lincomb(&[(sample, sa), (model_output, -sb)])?,
                lincomb(&[(model_output, sa), (sample, sb)])?,
            ),
        };
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range as f32, range as f32)?;
        }
        let variance = ((1.0 - a_prev) / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let dir = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let mut prev = lincomb(&[(&x0, a_prev.sqrt()), (&eps, dir)])?;
        if self.eta > 0.0 {
            let noise = noise.ok_or_else(|| {
                SdError::Invalid(format!("{CLASS}: eta > 0 needs variance noise"))
            })?;
            check_same_shape(CLASS, noise, sample, "variance noise")?;
            prev = (prev + noise.to_dtype(DType::F32)?.affine(std_dev, 0.0)?)?;
        }
        to_dtype_of(prev, model_output)
    }
}

impl Sampler for Ddim {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Ddim
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.timesteps.len())?;
        Ok(sample.clone())
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        let noise = if self.eta > 0.0 {
            Some(rng.randn(sample.dims(), sample.device())?)
        } else {
            None
        };
        self.step_with_noise(model_output, step_index, sample, noise.as_ref())
    }
}
