//! A diffusers Stable Diffusion folder loaded as one model, and text-to-image sampling with
//! classifier-free guidance exactly as diffusers' `StableDiffusionPipeline` does it.
use crate::io::embedding::{AddedTokens, TokenEmbedding};
use crate::io::patch::Patch;
use crate::io::source::{ModelSource, SourceOptions};
use crate::io::tokenizer::ClipTokenizer;
use crate::models::clip::ClipTextModel;
use crate::models::probes::{AttentionRecord, AttentionRecorder};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::sample::scheduler::{build_sampler, SamplerKind, SchedulerConfig};
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use std::path::{Path, PathBuf};

/// The components of a diffusers `StableDiffusionPipeline` folder.
pub struct StableDiffusion {
    /// The diffusers folder or single-file checkpoint the model was loaded from.
    pub dir: PathBuf,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler: SchedulerConfig,
    pub device: Device,
    /// The weights' and the networks' compute dtype; the sampler's own arithmetic and the
    /// returned latents and images are f32 whatever it is.
    pub dtype: DType,
    /// Learned tokens added with [`StableDiffusion::add_embeddings`].
    pub added_tokens: Option<AddedTokens>,
}

impl StableDiffusion {
    /// Loads `dir` (a folder with `model_index.json`), computing in `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with_patches(dir, device, dtype, &[])
    }

    /// As [`Self::load`], with `patches` added to the weights (see [`crate::io::patch`]): each
    /// patched tensor must hash as the patch recorded, else an error naming patch and tensor.
    pub fn load_with_patches(
        dir: &Path,
        device: &Device,
        dtype: DType,
        patches: &[Patch],
    ) -> Result<Self> {
        let source = ModelSource::open(dir, &SourceOptions::default())?;
        Self::load_source(&source, device, dtype, patches)
    }

    /// Loads a diffusers folder or a single-file checkpoint (see [`ModelSource`]) with
    /// `patches` added.
    pub fn load_source(
        source: &ModelSource,
        device: &Device,
        dtype: DType,
        patches: &[Patch],
    ) -> Result<Self> {
        crate::io::patch::check_components(patches)?;
        let te_cfg = source.text_encoder_config()?;
        let unet_cfg = source.unet_config()?;
        let vae_cfg = source.vae_config()?;
        Ok(Self {
            dir: source.path().to_path_buf(),
            tokenizer: source.tokenizer()?,
            text_encoder: source.build("text_encoder", dtype, device, patches, |vb| {
                ClipTextModel::new(vb, &te_cfg)
            })?,
            unet: source.build("unet", dtype, device, patches, |vb| {
                UNet2DConditionModel::new(vb, &unet_cfg)
            })?,
            vae: source.build("vae", dtype, device, patches, |vb| {
                AutoencoderKL::new(vb, &vae_cfg)
            })?,
            scheduler: source.scheduler_config()?,
            device: device.clone(),
            dtype,
            added_tokens: None,
        })
    }

    /// Adds learned tokens (textual inversion) so that prompts can use them; `names[i]` names
    /// embedding `i` (its file) in errors. Call once, with every embedding.
    pub fn add_embeddings(
        &mut self,
        embeddings: Vec<TokenEmbedding>,
        names: &[String],
    ) -> Result<()> {
        if self.added_tokens.is_some() {
            return Err(SdError::Invalid(
                "embeddings were already added to this model".into(),
            ));
        }
        self.added_tokens = Some(AddedTokens::install(
            embeddings,
            names,
            &mut self.tokenizer,
            &self.text_encoder,
        )?);
        Ok(())
    }

    /// Token ids `[N, 77]` (u32) of `prompts`, padded and truncated as diffusers does.
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let p = match &self.added_tokens {
                Some(added) => added.expand(p),
                None => p.to_string(),
            };
            rows.push(Tensor::new(
                self.tokenizer.encode(&p)?.as_slice(),
                &self.device,
            )?);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// Text-encoder hidden states `[N, 77, D]` of `prompts`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor> {
        let ids = self.token_ids(prompts)?;
        match &self.added_tokens {
            Some(added) => self
                .text_encoder
                .forward_with_token_embeddings(&ids, &added.rows),
            None => self.text_encoder.forward(&ids),
        }
    }

    /// The side in pixels of the images the model draws by default
    /// ([`UNetConfig::default_image_side`](crate::models::unet::UNetConfig::default_image_side)).
    pub fn default_image_side(&self) -> usize {
        self.unet
            .config()
            .default_image_side(self.vae.downscale_factor())
    }

    /// Latent channels and the VAE's pixel-to-latent factor.
    pub fn latent_shape(&self, batch: usize, height: usize, width: usize) -> Result<[usize; 4]> {
        let f = self.vae.downscale_factor();
        if !height.is_multiple_of(f) || !width.is_multiple_of(f) || height == 0 || width == 0 {
            return Err(SdError::Invalid(format!(
                "image size {width}x{height} must be a positive multiple of {f} (the VAE's downscale factor)"
            )));
        }
        Ok([batch, self.unet.config().in_channels, height / f, width / f])
    }

    /// Decodes latents `[N, 4, h, w]` to images `[N, 3, H, W]` in `[0, 1]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.vae.scaling_factor())?.to_dtype(self.dtype)?;
        let x = self.vae.decode(&z)?.to_dtype(DType::F32)?;
        Ok(((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}

/// One prompt's sampling job: `init_noise` holds one standard-normal latent per image.
pub struct SampleRequest<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance: f64,
    /// diffusers' `guidance_rescale` φ (Lin et al. 2023, arXiv 2305.08891, §3.4): the guided
    /// prediction is blended with itself rescaled to the conditional prediction's standard
    /// deviation, weight φ; 0 leaves it alone. Velocity models overshoot at high guidance
    /// without it.
    pub guidance_rescale: f64,
    /// `[N, C, h, w]` unscaled noise (diffusers' `latents=` argument).
    pub init_noise: Tensor,
    /// Denoising step indices whose cross-attention probabilities are kept.
    pub attention_steps: &'a [usize],
    /// Seed of the noise ancestral samplers add during the steps.
    pub step_seed: u64,
}

pub struct SampleOutput {
    /// Final latents `[N, C, h, w]` (before VAE decoding).
    pub latents: Tensor,
    /// `(step index, module path, probabilities [N, heads, pixels, 77])` of the conditional branch.
    pub attention: Vec<(usize, AttentionRecord)>,
}

impl StableDiffusion {
    /// Denoises `req.init_noise` conditioned on the prompt; `on_step` is told each finished step.
    pub fn sample(&self, req: &SampleRequest, on_step: impl FnMut(usize)) -> Result<SampleOutput> {
        let n = req.init_noise.dim(0)?;
        let cond = self.encode_prompts(&[req.prompt])?.repeat((n, 1, 1))?;
        let uncond = if req.guidance > 1.0 {
            Some(
                self.encode_prompts(&[req.negative_prompt])?
                    .repeat((n, 1, 1))?,
            )
        } else {
            None
        };
        let unet = GuidedUNet {
            unet: &self.unet,
            scheduler: &self.scheduler,
            dtype: self.dtype,
        };
        unet.denoise(&cond, uncond.as_ref(), req, on_step)
    }
}

/// A UNet and its scheduler, as the sampling loop sees them.
pub struct GuidedUNet<'a> {
    pub unet: &'a UNet2DConditionModel,
    pub scheduler: &'a SchedulerConfig,
    /// The UNet's compute dtype.
    pub dtype: DType,
}

impl GuidedUNet<'_> {
    /// Denoises `req.init_noise` (`[N, C, h, w]`) under the hidden states `cond` (`[N, 77, D]`,
    /// one row per image) with classifier-free guidance against `uncond` (`[N, 77, D]`; `None`:
    /// no guidance). `req.prompt` and `req.negative_prompt` are not read: the contexts are.
    pub fn denoise(
        &self,
        cond: &Tensor,
        uncond: Option<&Tensor>,
        req: &SampleRequest,
        mut on_step: impl FnMut(usize),
    ) -> Result<SampleOutput> {
        check_guidance_rescale(req.guidance_rescale)?;
        let n = req.init_noise.dim(0)?;
        let device = req.init_noise.device();
        let cfg = uncond.is_some();
        let context = match uncond {
            Some(uncond) => Tensor::cat(&[uncond, cond], 0)?,
            None => cond.clone(),
        };
        let mut sampler = build_sampler(req.sampler, self.scheduler, req.steps)?;
        let mut latents = (&req.init_noise * sampler.init_noise_sigma())?;
        let mut rng = NoiseRng::new(req.step_seed);
        let mut attention = Vec::new();
        let timesteps = sampler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let model_in = if cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let model_in = sampler.scale_model_input(&model_in, i)?;
            let t_tensor = Tensor::new(&[t as f32], device)?;
            let recorder = req
                .attention_steps
                .contains(&i)
                .then(AttentionRecorder::new);
            let pred = self
                .unet
                .forward_with_probe(
                    &model_in.to_dtype(self.dtype)?,
                    &t_tensor,
                    &context,
                    recorder.as_ref(),
                )?
                .to_dtype(DType::F32)?;
            if let Some(rec) = recorder {
                for record in rec.take() {
                    let record = if cfg {
                        record.with_probs(record.probs.narrow(0, n, n)?)
                    } else {
                        record
                    };
                    attention.push((i, record));
                }
            }
            let pred = if cfg {
                let uncond = pred.narrow(0, 0, n)?;
                let cond = pred.narrow(0, n, n)?;
                let guided = (&uncond + ((&cond - &uncond)? * req.guidance)?)?;
                if req.guidance_rescale > 0.0 {
                    rescale_guided(&guided, &cond, req.guidance_rescale)?
                } else {
                    guided
                }
            } else {
                pred
            };
            latents = sampler.step(&pred, i, &latents, &mut rng)?;
            on_step(i);
        }
        Ok(SampleOutput { latents, attention })
    }
}

/// A `guidance_rescale` weight must be a blend weight in [0, 1] (NaN is refused too).
pub fn check_guidance_rescale(phi: f64) -> Result<()> {
    if (0.0..=1.0).contains(&phi) {
        Ok(())
    } else {
        Err(SdError::Invalid(format!(
            "guidance rescale must lie in [0, 1] (a blend weight), got {phi}"
        )))
    }
}

/// diffusers' `rescale_noise_cfg`: `φ · guided · σ(cond) / σ(guided) + (1 − φ) · guided`,
/// σ being each image's standard deviation over all its values (Bessel-corrected, as
/// `torch.std`). `guided`, `cond`: `[N, C, h, w]`.
pub fn rescale_guided(guided: &Tensor, cond: &Tensor, phi: f64) -> Result<Tensor> {
    let std = |x: &Tensor| -> Result<Tensor> {
        let flat = x.flatten_from(1)?;
        let count = flat.dim(1)?;
        let centred = flat.broadcast_sub(&flat.mean_keepdim(1)?)?;
        let var = (centred.sqr()?.sum_keepdim(1)? / (count.max(2) - 1) as f64)?;
        Ok(var.sqrt()?)
    };
    let ratio = (std(cond)? / std(guided)?)?;
    let mut per_image_shape = vec![1; guided.rank()];
    per_image_shape[0] = guided.dim(0)?;
    let per_image = ratio.reshape(per_image_shape)?;
    let rescaled = guided.broadcast_mul(&per_image)?;
    Ok(((rescaled * phi)? + (guided * (1.0 - phi))?)?)
}

/// The seed of the extra noise ancestral samplers draw while sampling from image seed `seed`:
/// offset so that it never coincides with another image's initial noise. fmn-sample and
/// fmn-attack both use it, so their images of the same prompt and seed are the same.
pub fn step_seed(seed: u64) -> u64 {
    seed.wrapping_add(0x5EED_0000_0000)
}

/// One standard-normal latent per image, image `i` drawn from seed `seed + i`, so that an
/// image can be reproduced on its own.
pub fn seeded_noise(shape: [usize; 4], seed: u64, device: &Device) -> Result<Tensor> {
    let per_image = [1, shape[1], shape[2], shape[3]];
    let rows = (0..shape[0])
        .map(|i| NoiseRng::new(seed.wrapping_add(i as u64)).randn(&per_image, device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// A decoded image `[3, H, W]` with values in `[0, 1]` as 8-bit RGB (rounded as diffusers does).
pub fn to_rgb_image(image: &Tensor) -> Result<image::RgbImage> {
    let (c, h, w) = image.dims3()?;
    if c != 3 {
        return Err(SdError::Invalid(format!(
            "expected an RGB image tensor, got {c} channels"
        )));
    }
    let pixels = (image.permute((1, 2, 0))? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    image::RgbImage::from_raw(w as u32, h as u32, pixels)
        .ok_or_else(|| SdError::Invalid("image buffer size".into()))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn guidance_rescale_matches_hand_computed_values() {
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (2, 1, 1, 4), &Device::Cpu).unwrap();
        // Image 0: σ(guided) = sqrt(20/3), σ(cond) = sqrt(5/3): ratio 1/2, so with φ = 0.7 the
        // result is (0.7 · 0.5 + 0.3) · guided = 0.65 · guided. Image 1: both σ = 2, ratio 1.
        let guided = t(&[1.0, 3.0, 5.0, 7.0, 2.0, 2.0, 2.0, 6.0]);
        let cond = t(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 4.0]);
        let out: Vec<f32> = super::rescale_guided(&guided, &cond, 0.7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [0.65, 1.95, 3.25, 4.55, 2.0, 2.0, 2.0, 6.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{out:?} vs {want:?}");
        }
    }
}
