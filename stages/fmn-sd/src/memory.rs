//! Pre-flight memory check: the peak memory of a request, estimated from the model's configs
//! and the sizes in its weight headers before anything is loaded, against the memory this
//! machine can give. A stage refuses what cannot fit instead of being killed by the OS.
//!
//! The estimate is weights + training state + the largest phase's activations. Activations
//! are a per-workload number of stored values per unit of *feature volume* (Σ over the
//! network's resolution levels of channels × pixels), measured on SD 1.5's UNet and VAE by
//! `cargo bench -p fmn-sd --bench sd_step` (BENCHMARKS.md#pre-flight-memory-estimate), so
//! they carry over to other widths, depths and image sizes as the volume does.
use crate::io::source::ModelSource;
use crate::models::unet::UNetConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::{Result, SdError};
use candle_core::DType;
use fmn_core::memory::human;

/// Parameters per component (0 for a component the request does not load).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelSize {
    pub unet: u64,
    pub vae: u64,
    pub text_encoder: u64,
}

impl ModelSize {
    /// Every component's parameter count, read off the weight files' headers.
    pub fn of(source: &ModelSource) -> Result<Self> {
        Ok(Self {
            unet: source.parameter_count("unet")?,
            vae: source.parameter_count("vae")?,
            text_encoder: source.parameter_count("text_encoder")?,
        })
    }

    pub fn total(&self) -> u64 {
        self.unet + self.vae + self.text_encoder
    }
}

/// The configs whose feature volumes the activations scale with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Configs<'a> {
    pub unet: Option<&'a UNetConfig>,
    pub vae: Option<&'a AutoencoderKLConfig>,
}

/// What one phase of a request computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// A UNet forward without gradients (one sampling step; classifier-free guidance doubles
    /// the batch).
    Forward,
    /// A training step: UNet forward and backward (every activation kept for the backward).
    Train {
        /// Parameters that get gradients.
        trainable_params: u64,
        /// Whether AdamW's two moments are held for them.
        optimizer: bool,
        /// Whether the text encoder is in the graph too (textual inversion).
        text_encoder_in_graph: bool,
    },
    /// The VAE decoding latents into images.
    Decode,
    /// The VAE encoding images into latents.
    Encode,
    /// The keys and values of a batch of prompts through every `attn2` at once, in f32
    /// (fmn-attack's prompt search scores candidates so): `tokens` per prompt, `width` = Σ over
    /// the layers of `to_k` and `to_v` outputs, `context_dim` the text encoder's width (the
    /// `[context_dim, width]` projection is held beside them).
    KeyValues {
        tokens: usize,
        width: u64,
        context_dim: u64,
    },
}

/// Batch-sized `[batch, tokens, width]` tensors alive at once while prompts are scored against
/// their targets: the keys and values, their difference to the target, its square.
const KEY_VALUE_COPIES: f64 = 3.0;

/// Stored values per unit of feature volume, per image, at the peak of each workload, set
/// on SD 1.5 at 256² (training: its batch-2 row, the largest per image) and checked at 512²
/// and batch 2 (within 8 %; BENCHMARKS.md#pre-flight-memory-estimate). Training is one number
/// for CA-only, whole-UNet and inversion steps alike: the backward needs every activation
/// whichever weights train.
const PER_VOLUME_TRAIN: f64 = 450.0;
const PER_VOLUME_FORWARD: f64 = 40.0;
const PER_VOLUME_DECODE: f64 = 15.0;
const PER_VOLUME_ENCODE: f64 = 8.0;

/// What the process holds besides tensors (code, allocator pools, buffers), measured as the
/// bench's resident memory before its first tensor.
const BASELINE_BYTES: f64 = 64.0 * (1u64 << 20) as f64;

/// One request: images of `height × width` pixels through `phases`, run one after the other
/// (the peak is the largest phase's), each with its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub height: usize,
    pub width: usize,
    /// The weights' compute dtype.
    pub dtype: DType,
    pub phases: Vec<(Workload, usize)>,
}

/// Estimated peak memory, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub weights: f64,
    /// Gradients and optimizer moments of the trainable parameters (f32).
    pub training_state: f64,
    pub activations: f64,
    pub baseline: f64,
}

impl Estimate {
    /// Bytes (saturating: a request too large for `u64` is `u64::MAX`).
    pub fn total(&self) -> u64 {
        let t = self.weights + self.training_state + self.activations + self.baseline;
        if t >= u64::MAX as f64 {
            u64::MAX
        } else {
            t as u64
        }
    }

    /// `"12.3 GiB (weights 3.4 GiB, training state 176 MiB, activations 8.7 GiB)"`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("weights {}", human(self.weights))];
        if self.training_state > 0.0 {
            parts.push(format!("training state {}", human(self.training_state)));
        }
        parts.push(format!("activations {}", human(self.activations)));
        format!("{} ({})", human(self.total() as f64), parts.join(", "))
    }
}

/// `Σ_levels channels × pixels` of a network whose level `l` has `channels[l]` channels at
/// `1 / 2^l` of `height × width` per side.
fn feature_volume(channels: &[usize], height: usize, width: usize) -> f64 {
    channels
        .iter()
        .enumerate()
        .map(|(l, &c)| {
            let scale = (1u64 << l.min(62)) as f64;
            c as f64 * (height as f64 / scale) * (width as f64 / scale)
        })
        .sum()
}

/// The VAE's downscale factor, from its config (SD's 8 without one).
fn vae_factor(vae: Option<&AutoencoderKLConfig>) -> usize {
    vae.map_or(8, |v| v.downscale_factor())
}

/// The estimated peak of `request` on a model of `size` with `configs`.
pub fn estimate(size: &ModelSize, configs: &Configs, request: &Request) -> Estimate {
    let dsize = request.dtype.size_in_bytes() as f64;
    let f = vae_factor(configs.vae);
    let (lh, lw) = (request.height / f, request.width / f);
    let unet = configs
        .unet
        .map_or(0.0, |u| feature_volume(&u.block_out_channels, lh, lw));
    let vae = configs.vae.map_or(0.0, |v| {
        feature_volume(&v.block_out_channels, request.height, request.width)
    });
    let mut activations = 0f64;
    let mut training_state = 0f64;
    for &(workload, batch) in &request.phases {
        let batch = batch as f64;
        let (per_volume, volume) = match workload {
            Workload::Forward => (PER_VOLUME_FORWARD, unet),
            Workload::Train {
                trainable_params,
                optimizer,
                ..
            } => {
                let copies = if optimizer { 3.0 } else { 1.0 };
                training_state = training_state.max(copies * trainable_params as f64 * 4.0);
                (PER_VOLUME_TRAIN, unet)
            }
            Workload::Decode => (PER_VOLUME_DECODE, vae),
            Workload::Encode => (PER_VOLUME_ENCODE, vae),
            Workload::KeyValues {
                tokens,
                width,
                context_dim,
            } => {
                let floats = KEY_VALUE_COPIES * batch * tokens as f64 * width as f64
                    + (context_dim * width) as f64;
                activations = activations.max(floats * 4.0);
                continue;
            }
        };
        activations = activations.max(per_volume * volume * batch * dsize);
    }
    Estimate {
        weights: size.total() as f64 * dsize,
        training_state,
        activations,
        baseline: BASELINE_BYTES,
    }
}

impl Estimate {
    /// Refuses `request` (a person's words for it, e.g. `sampling 4 images of 512x512`) when
    /// this estimate exceeds `limit` (`--max-memory`) or, without one, the available memory.
    pub fn check(&self, request: &str, limit: Option<u64>) -> Result<()> {
        fmn_core::memory::check(self.total(), &self.describe(), request, limit)
            .map_err(SdError::TooLarge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peaks measured by `cargo bench -p fmn-sd --bench sd_step` at SD 1.5 size (VmHWM,
    /// BENCHMARKS.md#pre-flight-memory-estimate): the estimate stays within 25 %.
    #[test]
    fn sd15_estimates_are_within_a_quarter_of_the_measured_peaks() {
        let unet: UNetConfig = serde_json::from_value(serde_json::json!({
            "sample_size": 64, "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768, "attention_head_dim": 8, "layers_per_block": 2
        }))
        .unwrap();
        let vae: AutoencoderKLConfig = serde_json::from_value(serde_json::json!({
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "latent_channels": 4
        }))
        .unwrap();
        let configs = Configs {
            unet: Some(&unet),
            vae: Some(&vae),
        };
        let unet_only = ModelSize {
            unet: 859_520_964,
            ..Default::default()
        };
        let vae_only = ModelSize {
            vae: 83_653_863,
            ..Default::default()
        };
        let train = |trainable_params| Workload::Train {
            trainable_params,
            optimizer: false,
            text_encoder_in_graph: false,
        };
        for (size, workload, batch, model, measured_mib) in [
            (512, Workload::Forward, 2, unet_only, 3762.0),
            (256, train(44_000_000), 2, unet_only, 5512.0),
            (512, train(44_000_000), 1, unet_only, 7160.0),
            (512, train(859_520_964), 1, unet_only, 10179.0),
            (512, Workload::Decode, 1, vae_only, 3716.0),
            (512, Workload::Encode, 1, vae_only, 2377.0),
        ] {
            let request = Request {
                height: size,
                width: size,
                dtype: DType::F32,
                phases: vec![(workload, batch)],
            };
            let est = estimate(&model, &configs, &request).total() as f64 / (1 << 20) as f64;
            let err = (est - measured_mib) / measured_mib;
            assert!(
                err.abs() < 0.25,
                "{workload:?} {size}² batch {batch}: {est:.0} MiB vs {measured_mib}"
            );
        }
    }

    /// SD 1.5's prompt search, by hand: 16 `attn2` layers of inner width 320 ×5, 640 ×5,
    /// 1280 ×6 (down 2+2+2, mid 1, up 3+3+3 by level), keys and values: Σ = 24,960; 32 prompts
    /// × 77 tokens × 24,960 × 3 copies + the 768 × 24,960 projection, in f32.
    #[test]
    fn key_values_hold_three_batch_copies_and_the_projection() {
        let width = 2 * (5 * 320 + 5 * 640 + 6 * 1280);
        assert_eq!(width, 24_960);
        let request = Request {
            height: 512,
            width: 512,
            dtype: DType::F16,
            phases: vec![(
                Workload::KeyValues {
                    tokens: 77,
                    width,
                    context_dim: 768,
                },
                32,
            )],
        };
        let est = estimate(&ModelSize::default(), &Configs::default(), &request);
        assert_eq!(est.activations, 814_694_400.0);
        assert_eq!(est.weights, 0.0);
    }

    #[test]
    fn feature_volume_sums_levels() {
        // SD 1.5's UNet at a 32×32 latent: 320·32² + 640·16² + 1280·8² + 1280·4².
        assert_eq!(feature_volume(&[320, 640, 1280, 1280], 32, 32), 593_920.0);
    }
}
