//! Euler (Karras et al. 2022, Algorithm 2 without churn), as diffusers'
//! `EulerDiscreteScheduler`.
//!
//! Config keys used (with `EulerDiscreteScheduler`'s defaults): the beta keys (see
//! [`BetaSchedule`]), `prediction_type` "epsilon" (also "v_prediction", "sample" /
//! "original_sample"), `timestep_spacing` **"linspace"**, `steps_offset` 0,
//! `rescale_betas_zero_snr` false, `use_karras_sigmas` false, `sigma_min` / `sigma_max`
//! (Karras range), `final_sigmas_type` "zero" (or "sigma_min"), `timestep_type` "discrete"
//! (or "continuous", which with v-prediction feeds `0.25 * ln(sigma)` as the timestep),
//! `interpolation_type` "linear". Unsupported (an error if set): `use_exponential_sigmas`,
//! `use_beta_sigmas`, `interpolation_type: "log_linear"`. The `step` options `s_churn`,
//! `s_tmin`, `s_tmax`, `s_noise` keep diffusers' defaults (no churn), which is what the
//! pipelines use.
use super::betas::{self, BetaSchedule, ExtraSchedules};
use super::config::ClassReader;
use super::{
    check_num_steps, check_same_shape, check_step_index, lincomb, to_dtype_of, PredictionType,
    Sampler, SamplerKind, SchedulerConfig, TimestepSpacing,
};
use crate::Result;
use candle_core::{DType, Tensor};
use fmn_ops::noise::NoiseRng;

const CLASS: &str = "EulerDiscreteScheduler";

/// The sigma table shared by the Euler-type samplers: `n + 1` sigmas (descending, the last
/// one 0 or sigma_min) and the `n` matching timesteps, both rounded to f32 as diffusers.
#[derive(Clone, Debug)]
pub(crate) struct SigmaTable {
    pub schedule: BetaSchedule,
    pub spacing: TimestepSpacing,
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f64>,
}

/// Euler-type timesteps (f32) for `spacing`: `linspace` may be fractional.
pub(crate) fn euler_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: i64,
) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Linspace => betas::np_linspace(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / n) as f64;
            (0..n)
                .rev()
                .map(|i| (i as f64 * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            betas::np_arange(num_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| betas::np_round(t) as f32 - 1.0)
                .collect()
        }
    }
}

/// The alphas_cumprod the Euler-type classes use: with zero-SNR rescaling the last value is
/// set to 2^-24 so that the first sigma is finite.
pub(crate) fn sigma_alphas_cumprod(schedule: &mut BetaSchedule, rescaled: bool) {
    if rescaled {
        if let Some(last) = schedule.alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
}

/// Euler sampler.
#[derive(Clone, Debug)]
pub struct Euler {
    table: SigmaTable,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
}

impl Euler {
    /// `EulerDiscreteScheduler.from_config(cfg)` + `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        let r = cfg.reader(CLASS);
        let mut schedule = BetaSchedule::from_reader(&r, ExtraSchedules::None)?;
        sigma_alphas_cumprod(&mut schedule, r.bool("rescale_betas_zero_snr", false)?);
        let prediction_type = PredictionType::read(
            &r,
            &[
                PredictionType::Epsilon,
                PredictionType::VPrediction,
                PredictionType::Sample,
            ],
            true,
        )?;
        let interpolation = r.string("interpolation_type", "linear")?;
        if interpolation != "linear" {
            return Err(r.unsupported(
                "interpolation_type",
                format!("{interpolation:?}"),
                "only \"linear\" is implemented",
            ));
        }
        let karras = r.karras_sigmas()?;
        r.require_false("use_exponential_sigmas")?;
        r.require_false("use_beta_sigmas")?;
        let spacing = TimestepSpacing::read(&r, "linspace")?;
        let steps_offset = r.i64("steps_offset", 0)?;
        let final_sigma = final_sigma(&r, &schedule)?;
        let timestep_type = r.string("timestep_type", "discrete")?;
        let continuous = match timestep_type.as_str() {
            "discrete" => false,
            "continuous" => true,
            other => {
                return Err(r.unsupported(
                    "timestep_type",
                    format!("{other:?}"),
                    "expected discrete or continuous",
                ))
            }
        };
        check_num_steps(CLASS, num_inference_steps)?;

        let n_train = schedule.num_train_timesteps;
        let ts = euler_timesteps(spacing, n_train, num_inference_steps, steps_offset);
        let train_sigmas = betas::train_sigmas(&schedule.alphas_cumprod);
        let mut sigmas: Vec<f64> = ts
            .iter()
            .map(|&t| betas::interp(t as f64, &train_sigmas))
            .collect();
        let mut timesteps: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        if karras {
            let log_sigmas = betas::log_f32(&train_sigmas);
            let lo = r.opt_f64("sigma_min")?.unwrap_or(sigmas[sigmas.len() - 1]);
            let hi = r.opt_f64("sigma_max")?.unwrap_or(sigmas[0]);
            sigmas = betas::karras_sigmas(lo, hi, num_inference_steps);
            timesteps = sigmas
                .iter()
                .map(|&s| betas::sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigma);
        if continuous && prediction_type == PredictionType::VPrediction {
            timesteps = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| (0.25 * (s as f64).ln()) as f32 as f64)
                .collect();
        }
        let max_sigma = sigmas.iter().fold(0f32, |m, &s| m.max(s)) as f64;
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self {
            table: SigmaTable {
                schedule,
                spacing,
                sigmas,
                timesteps,
            },
            prediction_type,
            init_noise_sigma,
        })
    }

    /// The `n + 1` sigmas (the last is the final sigma, 0 by default).
    pub fn sigmas(&self) -> &[f32] {
        &self.table.sigmas
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    pub fn timestep_spacing(&self) -> TimestepSpacing {
        self.table.spacing
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.table.schedule.alphas_cumprod
    }
}

/// `final_sigmas_type`: "zero" (default) or "sigma_min" (the sigma of train step 0).
pub(crate) fn final_sigma(r: &ClassReader<'_>, schedule: &BetaSchedule) -> Result<f32> {
    let kind = r.string("final_sigmas_type", "zero")?;
    match kind.as_str() {
        "zero" => Ok(0.0),
        "sigma_min" => {
            let a = schedule.alphas_cumprod[0];
            Ok(((1.0 - a) / a).sqrt())
        }
        other => Err(r.unsupported(
            "final_sigmas_type",
            format!("{other:?}"),
            "expected zero or sigma_min",
        )),
    }
}

/// The Euler update `x + (x - x0) / sigma * dt`, where `x0` is the model's estimate of the
/// clean sample at noise level `sigma` (k-diffusion's `c_skip` / `c_out` for v-prediction).
///
/// The update is folded into one coefficient per tensor, computed in f64, instead of forming
/// `x0` and the derivative in f32 as diffusers does: the result is the same to f32 precision
/// where that computation is well conditioned, and avoids its cancellation where it is not
/// (with a zero-terminal-SNR schedule the first sigma is 4096, and diffusers' first step
/// loses about three digits: its result is ~1.5e-5 relative off exact arithmetic; ours
/// ~1e-7).
pub(crate) fn euler_update(
    prediction_type: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
    dt: f64,
) -> Result<Vec<(Tensor, f64)>> {
    let x = sample.to_dtype(DType::F32)?;
    let m = model_output.to_dtype(DType::F32)?;
    Ok(match prediction_type {
        // x0 = x - sigma * m  =>  (x - x0) / sigma = m
        PredictionType::Epsilon => vec![(x, 1.0), (m, dt)],
        // x0 = -sigma / sqrt(sigma^2 + 1) * m + x / (sigma^2 + 1)
        //   =>  (x - x0) / sigma = sigma / (sigma^2 + 1) * x + m / sqrt(sigma^2 + 1)
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            vec![(x, 1.0 + dt * sigma / s2), (m, dt / s2.sqrt())]
        }
        // x0 = m  =>  (x - x0) / sigma
        PredictionType::Sample => vec![(x, 1.0 + dt / sigma), (m, -dt / sigma)],
    })
}

/// `sample / sqrt(sigma^2 + 1)`.
pub(crate) fn scale_input(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    let s = sigma as f64;
    Ok(sample.affine(1.0 / (s * s + 1.0).sqrt(), 0.0)?)
}

impl Sampler for Euler {
    fn kind(&self) -> SamplerKind {
        SamplerKind::Euler
    }
    fn timesteps(&self) -> &[f64] {
        &self.table.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.table.timesteps.len())?;
        scale_input(sample, self.table.sigmas[step_index])
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        check_step_index(CLASS, step_index, self.table.timesteps.len())?;
        check_same_shape(CLASS, model_output, sample, "model output")?;
        let sigma = self.table.sigmas[step_index] as f64;
        let sigma_next = self.table.sigmas[step_index + 1] as f64;
        let terms = euler_update(
            self.prediction_type,
            model_output,
            sample,
            sigma,
            sigma_next - sigma,
        )?;
        let terms: Vec<(&Tensor, f64)> = terms.iter().map(|(t, c)| (t, *c)).collect();
        to_dtype_of(lincomb(&terms)?, model_output)
    }
}
