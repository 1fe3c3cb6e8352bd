//! DPM-Solver++ multistep (Lu et al. 2022), as diffusers' `DPMSolverMultistepScheduler`
//! with its defaults: `algorithm_type` "dpmsolver++", `solver_order` 2, `solver_type`
//! "midpoint", `lower_order_final` true, `final_sigmas_type` "zero" ("DPM++ 2M").
//!
//! Config keys used (with the class defaults): the beta keys (see [`BetaSchedule`]),
//! `prediction_type` "epsilon" (also "v_prediction", "sample"), `timestep_spacing`
//! **"linspace"**, `steps_offset` 0, `rescale_betas_zero_snr` false, `solver_order` 2 (1, 2
//! or 3), `algorithm_type` "dpmsolver++" (also "sde-dpmsolver++", which draws noise each
//! step; "deis" reads as "dpmsolver++" like in diffusers), `solver_type` "midpoint" (also
//! "heun"; "logrho" / "bh1" / "bh2" read as "midpoint" like in diffusers),
//! `lower_order_final` true, `euler_at_final` false, `final_sigmas_type` "zero" (or
//! "sigma_min"), `lambda_min_clipped` -inf, `use_karras_sigmas` false (with `sigma_min` /
//! `sigma_max` when the config has them, as diffusers' hidden config does).
//!
//! Unsupported (an error if set): `algorithm_type` "dpmsolver" / "sde-dpmsolver" (the
//! deprecated noise-prediction variants), `thresholding`, `use_exponential_sigmas`,
//! `use_beta_sigmas`, `use_lu_lambdas`, `use_flow_sigmas`, `prediction_type`
//! "flow_prediction", `variance_type` "learned" / "learned_range". `use_dynamic_shifting` / `flow_shift` /
//! `time_shift_type` only act on flow-matching models and are ignored, as diffusers
//! ignores them without a `mu`.
use super::betas::{self, BetaSchedule, ExtraSchedules};
use super::euler::{final_sigma, sigma_alphas_cumprod};
use super::{
    check_num_steps, check_same_shape, check_step_index, int_timesteps, lincomb, to_dtype_of,
    PredictionType, Sampler, SamplerKind, SchedulerConfig, TimestepSpacing,
};
use crate::{Result, SdError};
use candle_core::{DType, Tensor};
use fmn_ops::noise::NoiseRng;

const CLASS: &str = "DPMSolverMultistepScheduler";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// DPM-Solver++ (2M by default) sampler. Keeps the previous model outputs, so steps must be
/// taken in order.
#[derive(Clone, Debug)]
pub struct DpmPp2m {
    schedule: BetaSchedule,
    spacing: TimestepSpacing,
    prediction_type: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    sde: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The last `solver_order` x0 predictions, oldest first.
    model_outputs: Vec<Tensor>,
    lower_order_nums: usize,
    next_step: usize,
}

impl DpmPp2m {
    /// `DPMSolverMultistepScheduler.from_config(cfg)` + `set_timesteps(n)`.
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
            false,
        )?;
        let solver_order = r.usize("solver_order", 2)?;
        if !(1..=3).contains(&solver_order) {
            return Err(r.unsupported("solver_order", solver_order, "expected 1, 2 or 3"));
        }
        let algorithm = r.string("algorithm_type", "dpmsolver++")?;
        let sde = match algorithm.as_str() {
            "dpmsolver++" | "deis" => false,
            "sde-dpmsolver++" => true,
            other => {
                return Err(r.unsupported(
                    "algorithm_type",
                    format!("{other:?}"),
                    "expected dpmsolver++ or sde-dpmsolver++",
                ))
            }
        };
        let solver = r.string("solver_type", "midpoint")?;
        let solver_type = match solver.as_str() {
            "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(r.unsupported(
                    "solver_type",
                    format!("{other:?}"),
                    "expected midpoint or heun",
                ))
            }
        };
        let lower_order_final = r.bool("lower_order_final", true)?;
        let euler_at_final = r.bool("euler_at_final", false)?;
        r.require_false("thresholding")?;
        // Only the learned variances change anything (they split the model output).
        if let Some(v) = r.opt_string("variance_type")? {
            if v == "learned" || v == "learned_range" {
                return Err(r.unsupported(
                    "variance_type",
                    format!("{v:?}"),
                    "learned variances are not implemented",
                ));
            }
        }
        let karras = r.karras_sigmas()?;
        for key in [
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
        ] {
            r.require_false(key)?;
        }
        let final_sigma_kind = r.string("final_sigmas_type", "zero")?;
        if algorithm == "deis" && final_sigma_kind == "zero" {
            return Err(r.invalid(
                "final_sigmas_type",
                "\"zero\" is not supported with algorithm_type \"deis\"; choose \"sigma_min\"",
            ));
        }
        let final_sigma = final_sigma(&r, &schedule)?;
        let lambda_min_clipped = r
            .opt_f64("lambda_min_clipped")?
            .unwrap_or(f64::NEG_INFINITY);
        let spacing = TimestepSpacing::read(&r, "linspace")?;
        let steps_offset = r.i64("steps_offset", 0)?;
        check_num_steps(CLASS, num_inference_steps)?;

        let n_train = schedule.num_train_timesteps;
        let ac = &schedule.alphas_cumprod;
        // Clip the smallest lambdas (critical for the cosine schedule): the number of train
        // steps, counted from the noisy end, whose lambda is below lambda_min_clipped.
        let clipped = ac
            .iter()
            .rev()
            .map(|&a| {
                let ln_alpha = (a.sqrt() as f64).ln() as f32;
                let ln_sigma = ((1.0 - a).sqrt() as f64).ln() as f32;
                ln_alpha - ln_sigma
            })
            .take_while(|&l| (l as f64) < lambda_min_clipped)
            .count();
        let last_timestep = n_train - clipped;
        let n = num_inference_steps;
        let ints: Vec<i64> = match spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<i64> = betas::np_linspace(0.0, last_timestep as f64 - 1.0, n + 1)
                    .into_iter()
                    .rev()
                    .map(|t| betas::np_round(t) as i64)
                    .collect();
                v.pop();
                v
            }
            TimestepSpacing::Leading => {
                let mut v = int_timesteps(spacing, last_timestep, n + 1, steps_offset);
                // int_timesteps uses num_train // steps as the ratio: same rule, over
                // last_timestep and n + 1 points; drop the final 0 (+ offset).
                v.pop();
                v
            }
            TimestepSpacing::Trailing => {
                let ratio = n_train as f64 / n as f64;
                betas::np_arange(last_timestep as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| betas::np_round(t) as i64 - 1)
                    .collect()
            }
        };
        let train_sigmas = betas::train_sigmas(ac);
        let (timesteps, mut sigmas): (Vec<i64>, Vec<f32>) = if karras {
            let log_sigmas = betas::log_f32(&train_sigmas);
            let lo = match r.opt_f64("sigma_min")? {
                Some(v) => v,
                None => train_sigmas[0] as f64,
            };
            let hi = match r.opt_f64("sigma_max")? {
                Some(v) => v,
                None => train_sigmas[n_train - 1] as f64,
            };
            let ks = betas::karras_sigmas(lo, hi, n);
            let round = schedule.beta_schedule != "squaredcos_cap_v2";
            let ts = ks
                .iter()
                .map(|&s| {
                    let t = betas::sigma_to_t(s, &log_sigmas);
                    // diffusers rounds, except for the cosine schedule whose fractional
                    // timesteps are then truncated by the cast to int64.
                    (if round { betas::np_round(t) } else { t.trunc() }) as i64
                })
                .collect();
            (ts, ks.into_iter().map(|s| s as f32).collect())
        } else {
            // np.interp: exact at integer timesteps, clamped outside the train range.
            let sig = ints
                .iter()
                .map(|&t| betas::interp(t as f64, &train_sigmas) as f32)
                .collect();
            (ints, sig)
        };
        if timesteps.is_empty() {
            return Err(SdError::Invalid(format!(
                "{CLASS}: {n} inference steps give no timesteps"
            )));
        }
        sigmas.push(final_sigma);
        Ok(Self {
            schedule,
            spacing,
            prediction_type,
            solver_order,
            solver_type,
            sde,
            lower_order_final,
            euler_at_final,
            final_sigma_zero: final_sigma == 0.0,
            sigmas,
            timesteps: timesteps.iter().map(|&t| t as f64).collect(),
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    /// The `n + 1` sigmas (the last is the final sigma, 0 by default).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    pub fn timestep_spacing(&self) -> TimestepSpacing {
        self.spacing
    }

    pub fn solver_order(&self) -> usize {
        self.solver_order
    }

    /// Whether this is the SDE variant (draws noise each step).
    pub fn is_sde(&self) -> bool {
        self.sde
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    /// Forgets the history so that sampling can start again from step 0.
    pub fn reset(&mut self) {
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.next_step = 0;
    }

    /// (alpha_t, sigma_t, lambda_t) of the VP process at noise level `sigma`.
    fn alpha_sigma_lambda(sigma: f32) -> (f64, f64, f64) {
        let s = sigma as f64;
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        let sig = s * alpha;
        (alpha, sig, alpha.ln() - sig.ln())
    }

    /// One step with explicit noise (only used, and then required, by the SDE variant).
    pub fn step_with_noise(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        check_step_index(CLASS, step_index, n)?;
        check_same_shape(CLASS, model_output, sample, "model output")?;
        if step_index != self.next_step {
            return Err(SdError::Invalid(format!(
                "{CLASS}: multistep sampler must be stepped in order: expected step {}, got \
                 {step_index} (call reset() to start over)",
                self.next_step
            )));
        }
        let noise = if self.sde {
            let noise = noise
                .ok_or_else(|| SdError::Invalid(format!("{CLASS}: sde-dpmsolver++ needs noise")))?;
            check_same_shape(CLASS, noise, sample, "noise")?;
            Some(noise.to_dtype(DType::F32)?)
        } else {
            None
        };
        let i = step_index;
        let lower_order_final = i == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_sigma_zero);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;

        // Data (x0) prediction.
        let sample = sample.to_dtype(DType::F32)?;
        let x0 = {
            let (alpha, sig, _) = Self::alpha_sigma_lambda(self.sigmas[i]);
            match self.prediction_type {
                PredictionType::Epsilon => {
                    lincomb(&[(&sample, 1.0 / alpha), (model_output, -sig / alpha)])?
                }
                PredictionType::Sample => model_output.to_dtype(DType::F32)?,
                PredictionType::VPrediction => lincomb(&[(&sample, alpha), (model_output, -sig)])?,
            }
        };
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);

        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let prev = self.update(order, i, &sample, noise.as_ref())?;
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        to_dtype_of(prev, model_output)
    }

    fn update(
        &self,
        order: usize,
        i: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (alpha_t, sigma_t, lambda_t) = Self::alpha_sigma_lambda(self.sigmas[i + 1]);
        let (_, sigma_s0, lambda_s0) = Self::alpha_sigma_lambda(self.sigmas[i]);
        let h = lambda_t - lambda_s0;
        let m = &self.model_outputs;
        let m0 = &m[m.len() - 1];
        // The linear part: x_t = a * sample + b * D0 (+ higher-order terms, + noise).
        let (a, b) = if self.sde {
            let e = (-h).exp();
            (sigma_t / sigma_s0 * e, alpha_t * (1.0 - (-2.0 * h).exp()))
        } else {
            (sigma_t / sigma_s0, -alpha_t * ((-h).exp() - 1.0))
        };
        if order == 1 {
            let mut terms = vec![(sample, a), (m0, b)];
            let ns = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
            if let Some(noise) = noise {
                terms.push((noise, ns));
            }
            return lincomb(&terms);
        }
        let (_, _, lambda_s1) = Self::alpha_sigma_lambda(self.sigmas[i - 1]);
        let m1 = &m[m.len() - 2];
        let h0 = lambda_s0 - lambda_s1;
        let r0 = h0 / h;
        if order == 2 {
            // D1 = (m0 - m1) / r0
            let d1 = (m0 - m1)?.affine(1.0 / r0, 0.0)?;
            let c1 = match (self.sde, self.solver_type) {
                (false, SolverType::Midpoint) => -0.5 * alpha_t * ((-h).exp() - 1.0),
                (false, SolverType::Heun) => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                (true, SolverType::Midpoint) => 0.5 * alpha_t * (1.0 - (-2.0 * h).exp()),
                (true, SolverType::Heun) => alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
            };
            let mut terms = vec![(sample, a), (m0, b), (&d1, c1)];
            let ns = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
            if let Some(noise) = noise {
                terms.push((noise, ns));
            }
            return lincomb(&terms);
        }
        // Third order.
        let (_, _, lambda_s2) = Self::alpha_sigma_lambda(self.sigmas[i - 2]);
        let m2 = &m[m.len() - 3];
        let h1 = lambda_s1 - lambda_s2;
        let r1 = h1 / h;
        let d1_0 = (m0 - m1)?.affine(1.0 / r0, 0.0)?;
        let d1_1 = (m1 - m2)?.affine(1.0 / r1, 0.0)?;
        let diff = (&d1_0 - &d1_1)?;
        let d1 = lincomb(&[(&d1_0, 1.0), (&diff, r0 / (r0 + r1))])?;
        let d2 = diff.affine(1.0 / (r0 + r1), 0.0)?;
        let (c1, c2) = if self.sde {
            let e2 = (-2.0 * h).exp();
            (
                alpha_t * ((1.0 - e2) / (-2.0 * h) + 1.0),
                alpha_t * ((1.0 - e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
            )
        } else {
            let e = (-h).exp();
            (
                alpha_t * ((e - 1.0) / h + 1.0),
                -alpha_t * ((e - 1.0 + h) / (h * h) - 0.5),
            )
        };
        let mut terms = vec![(sample, a), (m0, b), (&d1, c1), (&d2, c2)];
        let ns = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
        if let Some(noise) = noise {
            terms.push((noise, ns));
        }
        lincomb(&terms)
    }
}

impl Sampler for DpmPp2m {
    fn kind(&self) -> SamplerKind {
        SamplerKind::DpmPp2m
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
        let noise = if self.sde {
            Some(rng.randn(sample.dims(), sample.device())?)
        } else {
            None
        };
        self.step_with_noise(model_output, step_index, sample, noise.as_ref())
    }
}
