//! Deterministic weight initialisation for models trained from scratch.
//!
//! candle's CPU random generator cannot be seeded, so a `VarMap` gives different initial
//! weights on every run. [`SeededVars`] creates each variable from a generator seeded by the
//! run's seed and the variable's name, honouring the module's init hint (constant, normal,
//! uniform, Kaiming), so the same seed always gives the same model whatever the build order.
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use fmn_ops::noise::NoiseRng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct SeededVars {
    seed: u64,
    vars: Arc<Mutex<HashMap<String, Var>>>,
}

/// FNV-1a: a stable hash of the variable name (std's hasher is not stable across releases).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SeededVars {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            vars: Arc::default(),
        }
    }

    /// A builder whose missing tensors are created here (f32 on `device`).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every variable created so far, sorted by name.
    pub fn sorted(&self) -> Vec<(String, Var)> {
        let mut v: Vec<_> = self
            .vars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn create(
        &self,
        shape: &Shape,
        name: &str,
        hint: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut rng = NoiseRng::new(self.seed ^ name_hash(name));
        let dims = shape.dims();
        let n = shape.elem_count();
        let uniform = |rng: &mut NoiseRng, lo: f64, up: f64| -> Result<Tensor> {
            let v: Vec<f64> = (0..n).map(|_| lo + (up - lo) * rng.uniform()).collect();
            Tensor::from_vec(v, dims, dev)
        };
        let normal = |rng: &mut NoiseRng, mean: f64, std: f64| -> Result<Tensor> {
            rng.randn(dims, dev)?
                .to_dtype(DType::F64)?
                .affine(std, mean)
        };
        let t = match hint {
            Init::Const(c) => Tensor::full(c, dims, dev)?,
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev)?,
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up)?,
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)?
                    }
                    NormalOrUniform::Normal => normal(&mut rng, 0.0, std)?,
                }
            }
        };
        t.to_dtype(dtype)
    }
}

impl SimpleBackend for SeededVars {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self.vars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("{name}: requested shape {s:?}, existing {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&self.create(&s, name, h, dtype, dev)?)?;
        let t = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self
            .vars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }
}
