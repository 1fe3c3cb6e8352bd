//! `manifest.json`: what was sampled, how, and which file holds which image.
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub fmn_version: String,
    pub model: String,
    pub prompts: Vec<String>,
    pub negative_prompt: String,
    pub scheduler: String,
    pub steps: usize,
    pub guidance: f64,
    /// `--guidance-rescale` (absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub guidance_rescale: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub num_images: usize,
    pub init_latents: Option<String>,
    /// The `--patch` files applied to the model's weights, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// Learned-token files added to the tokenizer (`--embedding`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<String>,
    /// The `--shard I/N` this run sampled (absent: every image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<fmn_core::Shard>,
    pub images: Vec<ImageEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImageEntry {
    pub file: String,
    pub prompt_index: usize,
    pub prompt: String,
    pub image_index: usize,
    /// The seed of this image's initial noise; absent when --init-latents gave the noise.
    pub seed: Option<u64>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
