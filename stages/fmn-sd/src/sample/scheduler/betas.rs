//! The training noise schedule (betas, cumulative alphas) and the sigma tables derived from
//! it, computed the way diffusers computes them: betas and cumulative products are f32
//! tensors there, so they are f32 here too, rounded at the same points (a torch f32
//! `linspace` is `fma(step, i, start)` in f32; a torch CPU `cumprod` accumulates in f64).
use super::config::ClassReader;
use crate::{Result, SdError};

/// Betas and cumulative alpha products of the training process, as f32 (like diffusers).
#[derive(Clone, Debug, PartialEq)]
pub struct BetaSchedule {
    /// `beta_schedule` as configured (`"trained"` is never used: see `trained`).
    pub beta_schedule: String,
    /// Whether `trained_betas` replaced the named schedule.
    pub trained: bool,
    pub num_train_timesteps: usize,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

/// Which `beta_schedule` names a class accepts beyond the three every class has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExtraSchedules {
    /// DDIM, Euler, Euler ancestral, DPM-Solver: linear, scaled_linear, squaredcos_cap_v2.
    None,
    /// DDPMScheduler also has `laplace` and `sigmoid` (the training noise schedule's class).
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    Ddpm,
}

impl BetaSchedule {
    /// Reads `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
    /// `trained_betas` and `rescale_betas_zero_snr` (defaults: 1000, 0.0001, 0.02, "linear",
    /// none, false: the same in every diffusers scheduler class).
    pub(crate) fn from_reader(r: &ClassReader<'_>, extra: ExtraSchedules) -> Result<Self> {
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        if num_train_timesteps < 2 {
            return Err(r.invalid(
                "num_train_timesteps",
                format!("must be at least 2, got {num_train_timesteps}"),
            ));
        }
        let beta_start = r.f64("beta_start", 0.0001)?;
        let beta_end = r.f64("beta_end", 0.02)?;
        let beta_schedule = r.string("beta_schedule", "linear")?;
        let trained = r.opt_f64_list("trained_betas")?;
        let rescale = r.bool("rescale_betas_zero_snr", false)?;
        let n = num_train_timesteps;

        let (betas, trained) = match trained {
            Some(list) => {
                if list.len() != n {
                    return Err(r.invalid(
                        "trained_betas",
                        format!("has {} values but num_train_timesteps is {n}", list.len()),
                    ));
                }
                (list.iter().map(|&b| b as f32).collect(), true)
            }
            None => {
                let betas = match (beta_schedule.as_str(), extra) {
                    ("linear", _) => torch_linspace_f32(beta_start, beta_end, n),
                    ("scaled_linear", _) => {
                        torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n)
                            .into_iter()
                            .map(|b| b * b)
                            .collect()
                    }
                    ("squaredcos_cap_v2", _) => betas_for_alpha_bar(n, AlphaBar::Cosine),
                    ("laplace", ExtraSchedules::Ddpm) => betas_for_alpha_bar(n, AlphaBar::Laplace),
                    ("sigmoid", ExtraSchedules::Ddpm) => sigmoid_betas(beta_start, beta_end, n),
                    (other, _) => {
                        return Err(r.unsupported(
                            "beta_schedule",
                            format!("{other:?}"),
                            match extra {
                                ExtraSchedules::None => {
                                    "expected linear, scaled_linear or squaredcos_cap_v2"
                                }
                                ExtraSchedules::Ddpm => {
                                    "expected linear, scaled_linear, squaredcos_cap_v2, laplace or sigmoid"
                                }
                            },
                        ))
                    }
                };
                (betas, false)
            }
        };
        if betas.iter().any(|b| !b.is_finite() || *b < 0.0 || *b > 1.0) {
            return Err(r.invalid("beta_start/beta_end", "betas must lie in [0, 1]"));
        }
        let betas = if rescale {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let alphas_cumprod = cumprod(&betas.iter().map(|b| 1.0 - b).collect::<Vec<f32>>());
        Ok(Self {
            beta_schedule,
            trained,
            num_train_timesteps,
            betas,
            alphas_cumprod,
        })
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` bit for bit: the step is computed in f32,
/// the first half counts up from `start`, the second half down from `end`, each value with a
/// single rounding.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((n - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// Cumulative product, accumulated in f64 and stored as f32 (torch's CPU `cumprod`).
pub(crate) fn cumprod(x: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    x.iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

#[derive(Clone, Copy)]
enum AlphaBar {
    Cosine,
    Laplace,
}

/// diffusers' `betas_for_alpha_bar` (f64 arithmetic, capped at 0.999, stored as f32).
fn betas_for_alpha_bar(n: usize, kind: AlphaBar) -> Vec<f32> {
    let alpha_bar = |t: f64| -> f64 {
        match kind {
            AlphaBar::Cosine => {
                let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
                c * c
            }
            AlphaBar::Laplace => {
                let lmb = -0.5 * 1f64.copysign(0.5 - t) * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
                let snr = lmb.exp();
                (snr / (1.0 + snr)).sqrt()
            }
        }
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// DDPM's GeoDiff sigmoid schedule: `sigmoid(linspace(-6, 6)) * (end - start) + start` in f32.
fn sigmoid_betas(start: f64, end: f64, n: usize) -> Vec<f32> {
    let scale = (end - start) as f32;
    torch_linspace_f32(-6.0, 6.0, n)
        .into_iter()
        .map(|x| {
            let s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            s * scale + start as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), in f32 as diffusers.
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_ab[0];
    let last = sqrt_ab[sqrt_ab.len() - 1];
    let scale = first / (first - last);
    for v in sqrt_ab.iter_mut() {
        *v = (*v - last) * scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for i in 1..ab.len() {
        out.push(1.0 - ab[i] / ab[i - 1]);
    }
    out
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in f32: the sigma of each train step.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)` (clamped at both ends).
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let (lo, hi) = (fp[j] as f64, fp[j + 1] as f64);
    (hi - lo) * (x - j as f64) + lo
}

/// Karras et al. (2022) sigmas: `rho = 7` interpolation from `sigma_max` down to `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) train timestep whose sigma is `sigma`: linear interpolation in log sigma
/// (diffusers' `_sigma_to_t`). `log_sigmas` are the f32 logs of the train sigmas (ascending).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // The last index whose log sigma is <= log_sigma (0 when none), at most n - 2.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Natural log of each value, rounded to f32 (numpy's `np.log` on an f32 array).
pub(crate) fn log_f32(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| (v as f64).ln() as f32).collect()
}

/// `np.linspace(start, stop, num)` in f64: `i * step + start`, last value exactly `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// `np.arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values, the
/// i-th being `start + i * ((start + step) - start)` (numpy's fill rule).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// `np.round`: halves go to the even neighbour.
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// An error for a timestep outside the train range.
pub(crate) fn timestep_out_of_range(class: &str, t: i64, n: usize, steps: usize) -> SdError {
    SdError::Invalid(format!(
        "{class}: {steps} inference steps give timestep {t}, outside 0..{n} (too many steps for \
         this timestep_spacing / steps_offset)"
    ))
}
