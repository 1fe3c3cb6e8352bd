//! Noise schedulers: the inference samplers (DDIM, Euler, Euler ancestral, DPM-Solver++ 2M)
//! and the training-time forward process ([`NoiseSchedule`]).
//!
//! Each sampler reproduces the diffusers class of the same role (`DDIMScheduler`,
//! `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
//! `DPMSolverMultistepScheduler`) built with `from_config` from a folder's
//! `scheduler/scheduler_config.json`, to float precision: the tables (betas, cumulative
//! alphas, sigmas, timesteps) are computed with the same f32 roundings as diffusers, the
//! per-step scalars in f64, and the tensor math elementwise in f32. A config option the class
//! knows but we do not implement is an [`SdError::Unsupported`] naming the key and value,
//! never ignored.
//!
//! Usage (as a diffusers pipeline loop):
//! ```ignore
//! let mut s = build_sampler(SamplerKind::Euler, &cfg, 25)?;
//! let mut x = (rng.randn(&shape, &dev)? * s.init_noise_sigma())?;
//! for i in 0..s.timesteps().len() {
//!     let t = s.timesteps()[i];
//!     let inp = s.scale_model_input(&x, i)?;
//!     let eps = unet(&inp, t)?;          // with classifier-free guidance etc.
//!     x = s.step(&eps, i, &x, &mut rng)?;
//! }
//! ```
//! Steps are addressed by index (`0..timesteps().len()`), not by timestep value, so the
//! diffusers quirk for repeated timesteps (`index_for_timestep` starts at the second
//! occurrence) does not arise; for the usual step counts timesteps are distinct and the two
//! agree.
use crate::{Result, SdError};
use candle_core::{DType, Tensor};
use fmn_ops::noise::NoiseRng;

pub mod betas;
pub mod config;
pub mod ddim;
pub mod dpmpp_2m;
pub mod euler;
pub mod euler_ancestral;

pub use betas::BetaSchedule;
pub use config::SchedulerConfig;
pub use ddim::Ddim;
pub use dpmpp_2m::DpmPp2m;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;

use config::ClassReader;

/// The samplers we implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `DDIMScheduler` (eta 0 from [`build_sampler`]; see [`Ddim::with_eta`]).
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++, order 2, midpoint by default).
    DpmPp2m,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 4] = [
        SamplerKind::Ddim,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPp2m,
    ];

    /// The name [`FromStr`](std::str::FromStr) accepts: `ddim`, `euler`, `euler-a`, `dpmpp-2m`.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::DpmPp2m => "dpmpp-2m",
        }
    }

    /// The diffusers class whose behaviour (and whose config defaults) it reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::DpmPp2m => "DPMSolverMultistepScheduler",
        }
    }
}

impl serde::Serialize for SamplerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for SamplerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = SdError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ddim" => Ok(SamplerKind::Ddim),
            "euler" => Ok(SamplerKind::Euler),
            "euler-a" => Ok(SamplerKind::EulerAncestral),
            "dpmpp-2m" => Ok(SamplerKind::DpmPp2m),
            _ => Err(SdError::Invalid(format!(
                "unknown sampler {s:?}; expected one of ddim, euler, euler-a, dpmpp-2m"
            ))),
        }
    }
}

/// What the model predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise.
    Epsilon,
    /// `v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * x0` (Salimans & Ho 2022).
    VPrediction,
    /// The clean sample x0.
    Sample,
}

impl PredictionType {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }

    /// Reads `prediction_type` (default "epsilon"); `sample_alias` also accepts
    /// "original_sample" (Euler's backwards-compatible spelling). Anything else, or a type
    /// the class does not implement, is `Unsupported`.
    pub(crate) fn read(
        r: &ClassReader<'_>,
        allowed: &[PredictionType],
        sample_alias: bool,
    ) -> Result<Self> {
        let s = r.string("prediction_type", "epsilon")?;
        let p = match s.as_str() {
            "epsilon" => Some(PredictionType::Epsilon),
            "v_prediction" => Some(PredictionType::VPrediction),
            "sample" => Some(PredictionType::Sample),
            "original_sample" if sample_alias => Some(PredictionType::Sample),
            _ => None,
        };
        match p {
            Some(p) if allowed.contains(&p) => Ok(p),
            _ => {
                let names: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
                Err(r.unsupported(
                    "prediction_type",
                    format!("{s:?}"),
                    &format!("expected one of {}", names.join(", ")),
                ))
            }
        }
    }
}

/// How inference timesteps are spread over the train range (`timestep_spacing`, Table 2 of
/// Lin et al. 2023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

impl TimestepSpacing {
    pub(crate) fn read(r: &ClassReader<'_>, default: &str) -> Result<Self> {
        let s = r.string("timestep_spacing", default)?;
        match s.as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            _ => Err(r.unsupported(
                "timestep_spacing",
                format!("{s:?}"),
                "expected leading, trailing or linspace",
            )),
        }
    }
}

/// A denoising sampler, configured for a fixed number of inference steps.
pub trait Sampler: Send {
    /// Which sampler this is.
    fn kind(&self) -> SamplerKind;

    /// The timesteps to feed to the UNet, one per inference step (f64: Euler's may be
    /// fractional).
    fn timesteps(&self) -> &[f64];

    /// The number of inference steps (`timesteps().len()`).
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// Factor applied to initial standard-normal latents (diffusers' `init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64;

    /// The UNet input for step `step_index` (Euler-type samplers divide by
    /// `sqrt(sigma^2 + 1)`; the others return the sample unchanged).
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor>;

    /// One denoising step from `sample` (the latent at step `step_index`) given the model's
    /// output for it; returns the latent for the next step. `rng` supplies noise for
    /// ancestral / stochastic samplers and is left untouched by deterministic ones.
    /// Multistep samplers (DPM-Solver) keep history and must be stepped in order
    /// `0, 1, 2, ...`. The result has the dtype of `model_output`; the arithmetic is f32.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        rng: &mut NoiseRng,
    ) -> Result<Tensor>;
}

/// Builds sampler `kind` from a scheduler config the way diffusers'
/// `<Class>.from_config(config)` followed by `set_timesteps(num_inference_steps)` does.
pub fn build_sampler(
    kind: SamplerKind,
    cfg: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Sampler>> {
    Ok(match kind {
        SamplerKind::Ddim => Box::new(Ddim::new(cfg, num_inference_steps)?),
        SamplerKind::Euler => Box::new(Euler::new(cfg, num_inference_steps)?),
        SamplerKind::EulerAncestral => Box::new(EulerAncestral::new(cfg, num_inference_steps)?),
        SamplerKind::DpmPp2m => Box::new(DpmPp2m::new(cfg, num_inference_steps)?),
    })
}

/// `sum(coef * tensor)` in f32, as elementwise affine ops (differentiable).
pub(crate) fn lincomb(terms: &[(&Tensor, f64)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (t, c) in terms {
        let t = t.to_dtype(DType::F32)?;
        let term = if *c == 1.0 { t } else { t.affine(*c, 0.0)? };
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| SdError::Invalid("empty linear combination".into()))
}

/// Casts the result of a step back to the model output's dtype (as diffusers does).
pub(crate) fn to_dtype_of(x: Tensor, like: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(like.dtype())?)
}

pub(crate) fn check_num_steps(class: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(SdError::Invalid(format!(
            "{class}: num_inference_steps must be at least 1"
        )));
    }
    Ok(())
}

pub(crate) fn check_step_index(class: &str, step_index: usize, num_steps: usize) -> Result<()> {
    if step_index >= num_steps {
        return Err(SdError::Invalid(format!(
            "{class}: step index {step_index} is out of range for {num_steps} inference steps"
        )));
    }
    Ok(())
}

pub(crate) fn check_same_shape(class: &str, a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(SdError::Invalid(format!(
            "{class}: {what} has shape {:?}, the sample {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// Integer timesteps for `spacing` over `0..num_train` (diffusers' DDIM / DPM-Solver
/// `set_timesteps` rules, before any class-specific adjustment), descending.
pub(crate) fn int_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: i64,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => betas::np_linspace(0.0, (num_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|t| betas::np_round(t) as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = (num_train / n) as i64;
            (0..n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = num_train as f64 / n as f64;
            betas::np_arange(num_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| betas::np_round(t) as i64 - 1)
                .collect()
        }
    }
}
