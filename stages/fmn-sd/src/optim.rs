//! AdamW with gradient-norm clipping and a saveable state (for `--resume`), following
//! `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
use crate::{Result, SdError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's defaults.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    params: Vec<Param>,
    step: usize,
    pub config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?.detach();
                let v = var.zeros_like()?.detach();
                Ok(Param { name, var, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            step: 0,
            config,
        })
    }

    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The global L2 norm of the parameters' gradients (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                total += g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update. With `max_grad_norm`, gradients are first scaled so that their global norm
    /// is at most that value (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        let norm = self.grad_norm(grads)?;
        if !norm.is_finite() {
            return Err(SdError::Invalid(format!(
                "gradient norm is {norm}: the loss diverged (try a lower learning rate)"
            )));
        }
        let clip = match max_grad_norm {
            // 1e-6 as in torch's clip_grad_norm_.
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = (g * clip)?;
            p.m = ((&p.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let m_hat = (&p.m / bias1)?;
            let v_hat = (&p.v / bias2)?;
            let w = p.var.as_tensor();
            let decayed = (w * (1.0 - c.lr * c.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            p.var.set(&(decayed - (update * c.lr)?)?.detach())?;
        }
        Ok(norm)
    }

    /// Moments and step count, as tensors named `m/{param}`, `v/{param}` and `step`.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m/{}", p.name), p.m.clone());
            out.insert(format!("v/{}", p.name), p.v.clone());
        }
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert("step".into(), Tensor::new(self.step as u32, &device)?);
        Ok(out)
    }

    /// Restores what [`Self::state`] saved; every parameter's moments must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for p in &mut self.params {
            for (key, slot) in [
                (format!("m/{}", p.name), &mut p.m),
                (format!("v/{}", p.name), &mut p.v),
            ] {
                let t = state
                    .get(&key)
                    .ok_or_else(|| SdError::Invalid(format!("optimizer state has no `{key}`")))?;
                if t.dims() != p.var.dims() {
                    return Err(SdError::Invalid(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                *slot = t.to_dtype(p.var.dtype())?.to_device(p.var.device())?;
            }
        }
        let step = state
            .get("step")
            .ok_or_else(|| SdError::Invalid("optimizer state has no `step`".into()))?;
        self.step = step.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
        Ok(())
    }
}
