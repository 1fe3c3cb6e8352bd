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

/// DDIM steps per image: the sampling default of fmn-sample.
const STEPS: usize = 25;

/// Sampled latents `[N, C, h, w]` and the hidden states they were drawn under `[N, 77, D]`.
#[derive(Clone)]
pub struct PriorImages {
    pub latents: Tensor,
    pub contexts: Tensor,
}

/// What prior images are drawn from besides the base model: the prompts, the latent shape
/// and the seed. Equal keys, equal images.
#[derive(Clone, PartialEq)]
pub struct PriorKey {
    pub prompts: Vec<String>,
    pub latent: [usize; 3],
    pub seed: u64,
}

/// The last prior images drawn with a model, so that `--harden`'s rounds (each a run on the
/// same base model) sample them once.
#[derive(Default)]
pub struct PriorMemo(std::sync::Mutex<Option<(PriorKey, PriorImages)>>);

impl PriorMemo {
    /// The images of `key`, drawn by `draw` unless the last call had the same key.
    pub fn get_or_draw<E>(
        &self,
        key: PriorKey,
        draw: impl FnOnce(&PriorKey) -> Result<PriorImages, E>,
    ) -> Result<PriorImages, E> {
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, images)) = memo.as_ref() {
            if *k == key {
                return Ok(images.clone());
            }
        }
        let images = draw(&key)?;
        *memo = Some((key, images.clone()));
        Ok(images)
    }
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
