//! Seeded Gaussian noise that is the same on every device and platform.
use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A deterministic source of standard-normal tensors (ChaCha8 stream, seeded once).
pub struct NoiseRng {
    rng: ChaCha8Rng,
}

impl NoiseRng {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An f32 tensor of `shape` filled with N(0, 1) samples.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(data, shape, device)
    }

    /// A uniform sample in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        rand::Rng::random::<f64>(&mut self.rng)
    }

    /// A uniform integer in `lo..hi`.
    pub fn below(&mut self, lo: usize, hi: usize) -> usize {
        rand::Rng::random_range(&mut self.rng, lo..hi)
    }
}
