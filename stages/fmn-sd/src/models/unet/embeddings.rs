//! Sinusoidal timestep features and the timestep MLP (`time_proj`, `time_embedding`).
use crate::models::nn::{Activation, Linear};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// diffusers' `Timesteps`: `[B]` timesteps (float) `-> [B, dim]` features.
#[derive(Debug, Clone)]
pub struct Timesteps {
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

impl Timesteps {
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Self {
        Self {
            dim,
            flip_sin_to_cos,
            freq_shift,
        }
    }

    /// `timesteps: [B] -> [B, dim]` (f32)
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let half = self.dim / 2;
        let denom = half as f64 - self.freq_shift;
        // 10000 is the max period of diffusers' `get_timestep_embedding`.
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / denom).exp() as f32)
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
        let args = timesteps
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[cos, sin], 1)?
        } else {
            Tensor::cat(&[sin, cos], 1)?
        };
        if self.dim % 2 == 1 {
            emb.pad_with_zeros(1, 0, 1)
        } else {
            Ok(emb)
        }
    }
}

/// diffusers' `TimestepEmbedding`: `linear_1 -> act -> linear_2`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        time_embed_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(vb.pp("linear_1"), in_dim, time_embed_dim, true)?,
            linear_2: Linear::load(vb.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
            act,
        })
    }

    /// `[B, in_dim] -> [B, time_embed_dim]`
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.act.apply(&self.linear_1.forward(xs)?)?;
        self.linear_2.forward(&xs)
    }
}
