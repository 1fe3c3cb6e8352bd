//! Euler ancestral (k-diffusion's `sample_euler_ancestral`, eta 1), as diffusers'
//! `EulerAncestralDiscreteScheduler`.
//!
//! Config keys used (with the class defaults): the beta keys (see [`BetaSchedule`]),
//! `prediction_type` "epsilon" (or "v_prediction"; "sample" is `Unsupported`, as in
//! diffusers), `timestep_spacing` **"linspace"**, `steps_offset` 0,
//! `rescale_betas_zero_snr` false. The class has no other options.
//!
//! Each step draws one standard-normal tensor of the sample's shape (also on the last step,
//! where it is multiplied by 0), so a [`NoiseRng`] stream is consumed the same way whatever
//! the step count. [`EulerAncestral::step_with_noise`] takes the noise explicitly.
use super::betas::{self, BetaSchedule, ExtraSchedules};
use super::euler::{euler_timesteps, euler_update, scale_input, sigma_alphas_cumprod};
use super::{
    check_num_steps, check_same_shape, check_step_index, lincomb, to_dtype_of, PredictionType,
    Sampler, SamplerKind, SchedulerConfig, TimestepSpacing,
};
use crate::Result;
use candle_core::{DType, Tensor};
use fmn_ops::noise::NoiseRng;

const CLASS: &str = "EulerAncestralDiscreteScheduler";

/// Euler ancestral sampler.
#[derive(Clone, Debug)]
pub struct EulerAncestral {
    schedule: BetaSchedule,
    spacing: TimestepSpacing,
    prediction_type: PredictionType,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

impl EulerAncestral {
    /// `EulerAncestralDiscreteScheduler.from_config(cfg)` + `set_timesteps(n)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let r = cfg.reader(CLASS);
        let mut schedule = BetaSchedule::from_reader(&r, ExtraSchedules::None)?;
        sigma_alphas_cumprod(&mut schedule, r.bool("rescale_betas_zero_snr", false)?);
        let prediction_type = PredictionType::read(
            &r,
            &[PredictionType::Epsilon, PredictionType::VPrediction],
            false,
        )?;
        let spacing = TimestepSpacing::read(&r, "linspace")?;
        let steps_offset = r.i64("steps_offset", 0)?;
        check_num_steps(CLASS, num_inference_steps)?;

        let ts = euler_timesteps(
            spacing,
            schedule.num_train_timesteps,
            num_inference_steps,
            steps_offset,
        );
        let train_sigmas = betas::train_sigmas(&schedule.alphas_cumprod);
        let mut sigmas: Vec<f32> = ts
            .iter()
            .map(|&t| betas::interp(t as f64, &train_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().fold(0f32, |m, &s| m.max(s)) as f64;
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self {
            schedule,
            spacing,
            prediction_type,
            sigmas,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            init_noise_sigma,
        })
    }

    /// The `n + 1` sigmas (the last is 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
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

    /// One step with explicit noise (standard normal, the sample's shape): what
    /// [`Sampler::step`] does after drawing `rng.randn(sample.dims())`.
    pub fn step_with_noise(
        &self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.timesteps.len())?;
        check_same_shape(CLASS, model_output, sample, "model output")?;
        check_same_shape(CLASS, noise, sample, "noise")?;
        let sigma = self.sigmas[step_index] as f64;
        let sigma_to = self.sigmas[step_index + 1] as f64;
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();

        let mut terms = euler_update(
            self.prediction_type,
            model_output,
            sample,
            sigma,
            sigma_down - sigma,
        )?;
        terms.push((noise.to_dtype(DType::F32)?, sigma_up));
        let terms: Vec<(&Tensor, f64)> = terms.iter().map(|(t, c)| (t, *c)).collect();
        to_dtype_of(lincomb(&terms)?, model_output)
    }
}

impl Sampler for EulerAncestral {
    fn kind(&self) -> SamplerKind {
        SamplerKind::EulerAncestral
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.timesteps.len())?;
        scale_input(sample, self.sigmas[step_index])
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        let noise = rng.randn(sample.dims(), sample.device())?;
        self.step_with_noise(model_output, step_index, sample, &noise)
    }
}
