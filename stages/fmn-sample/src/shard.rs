//! `--shard I/N`: sample a deterministic slice of the (prompt, image) list. Item
//! `j = prompt_index × num_images + image_index` belongs to shard `j mod N`. Each image keeps
//! its file name, seed and initial noise, so with a deterministic sampler (DDIM, Euler,
//! DPM-Solver++) a shard's images equal the unsharded run's. Ancestral samplers draw their
//! step noise per batch, so there a shard's images differ from an unsharded run's.
use anyhow::Result;
use candle_core::{Device, IndexOp, Tensor};
use fmn_core::Shard;
use fmn_ops::noise::NoiseRng;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShardArgs {
    /// Sample only shard I of N (0-based) of the (prompt, image) list; the manifest records
    /// it. `fmn-eval --shard` / `fmn-eval merge` evaluate shards.
    #[arg(long)]
    pub shard: Option<Shard>,
}

/// The image indices of prompt `prompt_index` that `shard` samples.
pub fn images_of(shard: Option<Shard>, prompt_index: usize, num_images: usize) -> Vec<usize> {
    let shard = shard.unwrap_or(Shard::ALL);
    (0..num_images)
        .filter(|k| shard.selects(prompt_index * num_images + k))
        .collect()
}

/// The initial noise of images `ks`: rows `ks` of `init`, else seeded with `seed + k` (as
/// [`fmn_sd::sample::pipeline::seeded_noise`] seeds row k).
pub fn noise(
    per_image: [usize; 4],
    ks: &[usize],
    seed: u64,
    init: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let rows = ks
        .iter()
        .map(|&k| match init {
            Some(t) => t.i(k..k + 1),
            None => NoiseRng::new(seed.wrapping_add(k as u64)).randn(&per_image, device),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}
