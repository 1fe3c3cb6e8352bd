//! The base model's own images of preserved prompts (DreamBooth's prior preservation): latents
//! sampled once per run, on which `loss: denoise` keeps the UNet's predictions under their
//! prompts at the base model's. The concept's images alone leave what they do not show
//! unguarded: erasing stripes from striped images also erased bob's face (92 → 42 %,
//! BENCHMARKS.md#denoising-steps-against-the-attack).
use candle_core::{DType, Device, Tensor};
use fmn_sd::models::unet::UNet2DConditionModel;
use fmn_sd::sample::pipeline::seeded_noise;
use fmn_sd::sample::pipeline::{GuidedUNet, SampleRequest};
use fmn_sd::sample::scheduler::{SamplerKind, SchedulerConfig};

/// Preserved prompts drawn per run: one image each.
pub const IMAGES: usize = 16;

/// DDIM steps per image: the sampling default of fmn-sample.
const STEPS: usize = 25;

/// Sampled latents `[N, C, h, w]` and the hidden states they were drawn under `[N, 77, D]`.
pub struct PriorImages {
    pub latents: Tensor,
    pub contexts: Tensor,
}

impl PriorImages {
    /// One latent of `latent: [C, h, w]` per row of `contexts` (`[N, 77, D]`), denoised by the
    /// base `unet` with guidance `guidance` against `uncond` (`[1, 77, D]`); image `i` from
    /// seed `seed + i`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        unet: &UNet2DConditionModel,
        scheduler: &SchedulerConfig,
        contexts: Tensor,
        uncond: &Tensor,
        guidance: f64,
        latent: [usize; 3],
        seed: u64,
        device: &Device,
    ) -> fmn_sd::Result<Self> {
        let n = contexts.dim(0)?;
        let [c, h, w] = latent;
        let req = SampleRequest {
            prompt: "",
            negative_prompt: "",
            sampler: SamplerKind::Ddim,
            steps: STEPS,
            guidance,
            guidance_rescale: 0.0,
            init_noise: seeded_noise([n, c, h, w], seed, device)?,
            attention_steps: &[],
            step_seed: seed,
        };
        let guided = GuidedUNet {
            unet,
            scheduler,
            dtype: DType::F32,
        };
        let uncond = (guidance > 1.0)
            .then(|| uncond.repeat((n, 1, 1)))
            .transpose()?;
        let latents = guided
            .denoise(&contexts, uncond.as_ref(), &req, |_| {})?
            .latents
            .detach();
        Ok(Self { latents, contexts })
    }
}
