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
    moments: Moments,
}

/// The first and second moments of one parameter: f32 parameters on the CPU keep them in host
/// memory and are updated in one fused pass ([`fused_update`]; the tensor form costs ~15
/// element-wise passes, each a fresh allocation — `cargo bench -p fmn-sd --bench adamw`);
/// others (f64, GPU) as tensors.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var) -> Result<Self> {
        Ok(if var.device().is_cpu() && var.dtype() == DType::F32 {
            Moments::Host {
                m: vec![0.0; var.elem_count()],
                v: vec![0.0; var.elem_count()],
            }
        } else {
            Moments::Tensors {
                m: var.zeros_like()?.detach(),
                v: var.zeros_like()?.detach(),
            }
        })
    }

    fn tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Host { m, v } => (
                Tensor::from_slice(m, var.shape(), var.device())?,
                Tensor::from_slice(v, var.shape(), var.device())?,
            ),
            Moments::Tensors { m, v } => (m.clone(), v.clone()),
        })
    }
}

fn squared_norm(g: &Tensor) -> Result<f64> {
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The step's scalars: the clipping factor, bias corrections and the config.
struct StepScalars {
    clip: f64,
    bias1: f64,
    bias2: f64,
    c: AdamWConfig,
}

/// One AdamW update of `w` in place, element by element exactly as the tensor form.
fn fused_update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &StepScalars) {
    let c = &k.c;
    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
    let (one_b1, one_b2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
    let (bias1, bias2) = (k.bias1 as f32, k.bias2 as f32);
    let (clip, eps, lr) = (k.clip as f32, c.eps as f32, c.lr as f32);
    let keep = (1.0 - c.lr * c.weight_decay) as f32;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * clip;
        *m = *m * b1 + g * one_b1;
        *v = *v * b2 + g * g * one_b2;
        let update = (*m / bias1) / ((*v / bias2).sqrt() + eps);
        *w = *w * keep - update * lr;
    }
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
                let moments = Moments::zeros(&var)?;
                Ok(Param { name, var, moments })
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

    /// One update. With `max_grad_norm`, gradients are first scaled so that their global norm
    /// is at most that value (`torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    pub fn step(&mut self, grads: &GradStore, max_grad_norm: Option<f64>) -> Result<f64> {
        // Host-moment parameters' gradients are copied out once, for the norm and the update.
        let mut host_grads = Vec::with_capacity(self.params.len());
        let mut total = 0f64;
        for p in &self.params {
            let g = grads.get(p.var.as_tensor());
            host_grads.push(match (g, &p.moments) {
                (Some(g), Moments::Host { .. }) => {
                    let g = g.flatten_all()?.to_vec1::<f32>()?;
                    total += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
                    Some(g)
                }
                (Some(g), Moments::Tensors { .. }) => {
                    total += squared_norm(g)?;
                    None
                }
                (None, _) => None,
            });
        }
        let norm = total.sqrt();
        if !norm.is_finite() {
            return Err(SdError::NonFiniteGradient(norm));
        }
        let clip = match max_grad_norm {
            // 1e-6 as in torch's clip_grad_norm_.
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let k = StepScalars {
            clip,
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
            c,
        };
        for (p, host_g) in self.params.iter_mut().zip(host_grads) {
            match (&mut p.moments, host_g) {
                (Moments::Host { m, v }, Some(g)) => {
                    let mut w = p.var.flatten_all()?.to_vec1::<f32>()?;
                    fused_update(&mut w, &g, m, v, &k);
                    p.var
                        .set(&Tensor::from_vec(w, p.var.shape(), p.var.device())?)?;
                }
                (Moments::Host { .. }, None) => {}
                (Moments::Tensors { m, v }, _) => {
                    let Some(g) = grads.get(p.var.as_tensor()) else {
                        continue;
                    };
                    let g = (g * clip)?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
                    let m_hat = (&*m / k.bias1)?;
                    let v_hat = (&*v / k.bias2)?;
                    let w = p.var.as_tensor();
                    let decayed = (w * (1.0 - c.lr * c.weight_decay))?;
                    let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
                    p.var.set(&(decayed - (update * c.lr)?)?.detach())?;
                }
            }
        }
        Ok(norm)
    }

    /// Moments and step count, as tensors named `m/{param}`, `v/{param}` and `step`.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let (m, v) = p.moments.tensors(&p.var)?;
            out.insert(format!("m/{}", p.name), m);
            out.insert(format!("v/{}", p.name), v);
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
            let load = |key: String| -> Result<Tensor> {
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
                Ok(t.to_dtype(p.var.dtype())?.to_device(p.var.device())?)
            };
            let m = load(format!("m/{}", p.name))?;
            let v = load(format!("v/{}", p.name))?;
            p.moments = match p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::Tensors { .. } => Moments::Tensors { m, v },
            };
        }
        let step = state
            .get("step")
            .ok_or_else(|| SdError::Invalid("optimizer state has no `step`".into()))?;
        self.step = step.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
        Ok(())
    }
}
