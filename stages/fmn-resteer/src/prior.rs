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

/// Draws per concept on which [`explaining`] scores a prompt: at 8, the toy model's ranking
/// past its first few prompts differed from the ranking at 32.
const EXPLAIN_DRAWS: usize = 32;

/// Draws per UNet pass: a pass without gradients on 8 images holds less than the training
/// step the memory pre-flight checked (`fmn_sd::memory`: 40 against 450 values per unit of
/// feature volume and image).
const EXPLAIN_BATCH: usize = 8;

/// At most this many preserved prompts are scored per concept (one UNet pass of
/// `EXPLAIN_DRAWS` images each), those nearest the concept by token embedding: the shipped
/// lists' 1,750 would take 1,750 passes.
pub const EXPLAIN_CANDIDATES: usize = 128;

/// The indices of `contexts` (`[N, 77, D]`, one prompt each) from the prompt that best
/// explains `images` (the concept's clean latents, each `[1, C, h, w]`) to the one that
/// explains them worst: by the base UNet's denoising loss on the same `EXPLAIN_DRAWS` noisy
/// images (image, timestep in `timesteps`, noise, all from `seed`) under each prompt. A
/// diffusion model's own classifier (Li et al. 2023, "Your Diffusion Model is Secretly a
/// Zero-Shot Classifier"): the preserved prompts an erasure of these images endangers most.
pub fn explaining(
    base: &UNet2DConditionModel,
    schedule: &fmn_sd::train::noise_schedule::NoiseSchedule,
    contexts: &Tensor,
    images: &[Tensor],
    timesteps: (usize, usize),
    seed: u64,
) -> fmn_sd::Result<Vec<usize>> {
    let prompts = contexts.dim(0)?;
    if prompts == 0 || images.is_empty() {
        return Ok((0..prompts).collect());
    }
    let mut rng = fmn_ops::noise::NoiseRng::new(seed);
    let x0: Vec<Tensor> = (0..EXPLAIN_DRAWS)
        .map(|_| images[rng.below(0, images.len())].clone())
        .collect();
    let x0 = Tensor::cat(&x0, 0)?;
    let ts: Vec<usize> = (0..EXPLAIN_DRAWS)
        .map(|_| rng.below(timesteps.0, timesteps.1))
        .collect();
    let noisy = fmn_sd::train::scaffold::NoisyLatents::draw(schedule, &x0, &ts, &mut rng)?;
    let mut scored = Vec::with_capacity(prompts);
    for i in 0..prompts {
        let ctx = contexts.narrow(0, i, 1)?;
        let mut loss = 0.0;
        for start in (0..EXPLAIN_DRAWS).step_by(EXPLAIN_BATCH) {
            let n = EXPLAIN_BATCH.min(EXPLAIN_DRAWS - start);
            let pred = base.forward(
                &noisy.x_t.narrow(0, start, n)?,
                &noisy.t.narrow(0, start, n)?,
                &ctx.repeat((n, 1, 1))?,
            )?;
            loss += (pred - noisy.target.narrow(0, start, n)?)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        scored.push((loss, i));
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    Ok(scored.into_iter().map(|(_, i)| i).collect())
}
