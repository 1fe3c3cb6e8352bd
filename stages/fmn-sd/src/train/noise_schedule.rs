//! The forward (noising) process for training, as diffusers' `DDPMScheduler` (the class the
//! diffusers training scripts build from a folder's scheduler config): `add_noise`,
//! `get_velocity`, and the regression target for the configured `prediction_type`.
//!
//! Config keys used (with `DDPMScheduler`'s defaults): `num_train_timesteps` 1000,
//! `beta_start` 0.0001, `beta_end` 0.02, `beta_schedule` "linear" (also "scaled_linear",
//! "squaredcos_cap_v2", "laplace", "sigmoid"), `trained_betas`, `rescale_betas_zero_snr`
//! false, `prediction_type` "epsilon" (also "v_prediction", "sample"). The other DDPM keys
//! (`variance_type`, `clip_sample`, `thresholding`, `timestep_spacing`, ...) only concern
//! DDPM *sampling* and do not affect these functions.
use crate::sample::scheduler::betas::{BetaSchedule, ExtraSchedules};
use crate::sample::scheduler::{PredictionType, SchedulerConfig};
use crate::{Result, SdError};
use candle_core::Tensor;

const CLASS: &str = "DDPMScheduler";

/// The training noise schedule.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    schedule: BetaSchedule,
    prediction_type: PredictionType,
}

impl NoiseSchedule {
    /// `DDPMScheduler.from_config(cfg)`.
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self> {
        let r = cfg.reader(CLASS);
        let schedule = BetaSchedule::from_reader(&r, ExtraSchedules::Ddpm)?;
        let prediction_type = PredictionType::read(
            &r,
            &[
                PredictionType::Epsilon,
                PredictionType::VPrediction,
                PredictionType::Sample,
            ],
            false,
        )?;
        Ok(Self {
            schedule,
            prediction_type,
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.schedule.num_train_timesteps
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// The betas (f32, as diffusers stores them).
    pub fn betas(&self) -> &[f32] {
        &self.schedule.betas
    }

    /// `alphas_cumprod[t]`: the signal fraction `alpha_bar_t` of train step `t` (f32).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    /// Per-batch-item coefficients `(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))` in f32 (as
    /// diffusers computes them for f32 inputs), shaped `[B, 1, ..., 1]` to broadcast over `x`.
    fn coefficients(&self, x: &Tensor, timesteps: &[usize]) -> Result<(Tensor, Tensor)> {
        let dims = x.dims();
        if dims.is_empty() {
            return Err(SdError::Invalid(
                "NoiseSchedule: samples need a batch dimension".into(),
            ));
        }
        let batch = dims[0];
        if timesteps.len() != batch && timesteps.len() != 1 {
            return Err(SdError::Invalid(format!(
                "NoiseSchedule: {} timesteps for a batch of {batch} (give one per item, or one \
                 for all)",
                timesteps.len()
            )));
        }
        let n = self.schedule.num_train_timesteps;
        let mut a = Vec::with_capacity(timesteps.len());
        let mut b = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            if t >= n {
                return Err(SdError::Invalid(format!(
                    "NoiseSchedule: timestep {t} is outside 0..{n}"
                )));
            }
            let ac = self.schedule.alphas_cumprod[t];
            a.push(ac.sqrt());
            b.push((1.0 - ac).sqrt());
        }
        let mut shape = vec![timesteps.len()];
        shape.extend(std::iter::repeat_n(1, dims.len() - 1));
        let dev = x.device();
        let a = Tensor::from_vec(a, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
        let b = Tensor::from_vec(b, shape.as_slice(), dev)?.to_dtype(x.dtype())?;
        Ok((a, b))
    }

    fn check(x0: &Tensor, noise: &Tensor) -> Result<()> {
        if x0.dims() != noise.dims() {
            return Err(SdError::Invalid(format!(
                "NoiseSchedule: x0 has shape {:?} but noise {:?}",
                x0.dims(),
                noise.dims()
            )));
        }
        Ok(())
    }

    /// `sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise`, with `timesteps[i]` for batch
    /// item `i` (or one timestep for all): diffusers' `add_noise`. Differentiable in `x0`
    /// and `noise`.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        Self::check(x0, noise)?;
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((x0.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?)
    }

    /// `sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * x0`: diffusers' `get_velocity`.
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        Self::check(x0, noise)?;
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((noise.broadcast_mul(&a)? - x0.broadcast_mul(&b)?)?)
    }

    /// The regression target for the model output: `noise` (epsilon), the velocity
    /// (v_prediction) or `x0` (sample).
    pub fn target(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        Self::check(x0, noise)?;
        match self.prediction_type {
            PredictionType::Epsilon => Ok(noise.clone()),
            PredictionType::VPrediction => self.velocity(x0, noise, timesteps),
            PredictionType::Sample => Ok(x0.clone()),
        }
    }

    /// The model's x0 estimate from its output at train steps `timesteps` (the inverse of
    /// the target: `(x_t - sqrt(1-a) eps) / sqrt(a)` for epsilon, `sqrt(a) x_t - sqrt(1-a) v`
    /// for v_prediction, the output itself for sample).
    pub fn predict_x0(
        &self,
        x_t: &Tensor,
        model_output: &Tensor,
        timesteps: &[usize],
    ) -> Result<Tensor> {
        Self::check(x_t, model_output)?;
        let (a, b) = self.coefficients(x_t, timesteps)?;
        Ok(match self.prediction_type {
            PredictionType::Epsilon => {
                (x_t - model_output.broadcast_mul(&b)?)?.broadcast_div(&a)?
            }
            PredictionType::VPrediction => {
                (x_t.broadcast_mul(&a)? - model_output.broadcast_mul(&b)?)?
            }
            PredictionType::Sample => model_output.clone(),
        })
    }
}
