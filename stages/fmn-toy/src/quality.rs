//! The toy model's quality bar, measured: sample the toy world's prompts with several seeds,
//! judge the images, and check that each object word's cross-attention lands on the figure.
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use fmn_sd::models::probes::{token_mass, AttentionRecord};
use fmn_sd::sample::pipeline::{seeded_noise, SampleRequest, StableDiffusion};
use fmn_sd::sample::scheduler::SamplerKind;
use fmn_toy_world::judge::Judge;
use fmn_toy_world::scene::{Character, Colour, Concept, Object, SceneSpec};
use image::{GrayImage, RgbImage};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct QualitySettings {
    pub seeds: usize,
    pub steps: usize,
    pub guidance: f64,
    /// diffusers' `guidance_rescale` (0: none).
    pub guidance_rescale: f64,
    pub seed: u64,
}

impl Default for QualitySettings {
    /// The bar: DDIM, 25 steps, guidance 7.5, 8 seeds per prompt.
    fn default() -> Self {
        Self {
            seeds: 8,
            steps: 25,
            guidance: 7.5,
            guidance_rescale: 0.0,
            seed: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptResult {
    pub prompt: String,
    /// Images judged as the prompt asks (per prompt: object and colour both right, the
    /// character, or striped).
    pub right: usize,
    pub images: usize,
    pub verdicts: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// "a photo of a {colour} {object}", 16 pairs: the judged object is right.
    pub object_accuracy: f64,
    pub colour_accuracy: f64,
    pub bob_rate: f64,
    pub kiki_rate: f64,
    /// "... in the style of stripes": judged striped.
    pub striped_with_style: f64,
    /// The plain prompts: judged striped (should be low).
    pub striped_without_style: f64,
    /// Share of the object word's attention inside the figure, over the figure's share of
    /// the image (averaged over layers, steps, prompts and seeds).
    pub attention_in_figure: f64,
    pub figure_share: f64,
    pub attention_ratio: f64,
    /// Freshly rendered images passed through the VAE (encoder mean, decoder) and judged: what
    /// the decoder can draw at all, whatever the UNet does.
    pub vae_reconstruction: ReconstructionReport,
    pub prompts: Vec<PromptResult>,
    pub seconds: f64,
}

/// Judged rates of VAE reconstructions of rendered images, per kind of scene.
#[derive(Debug, Clone, Serialize)]
pub struct ReconstructionReport {
    /// Random scenes of the training distribution: object and colour both judged right.
    pub any_scene: f64,
    pub bob: f64,
    pub kiki: f64,
    pub striped: f64,
    pub images_per_kind: usize,
}

/// Seed of the rendered scenes the reconstruction check uses (not a training seed).
const RECONSTRUCTION_SEED: u64 = 90_210;

/// Renders `n` scenes of each kind, passes them through the VAE and judges the results.
pub fn reconstruction(
    sd: &StableDiffusion,
    judge: &Judge,
    n: usize,
) -> Result<ReconstructionReport> {
    let rate = |spec: &SceneSpec,
                ok: &dyn Fn(&fmn_toy_world::Verdict, &fmn_toy_world::Scene) -> bool|
     -> Result<f64> {
        let mut pixels = Vec::new();
        let mut scenes = Vec::new();
        for i in 0..n as u64 {
            let (scene, _) = fmn_toy_world::dataset::draw(RECONSTRUCTION_SEED, i, spec);
            let (image, _) = fmn_toy_world::render(&scene);
            crate::train::extend_planar_pixels(&mut pixels, &image);
            scenes.push(scene);
        }
        let side = fmn_toy_world::IMAGE_SIZE as usize;
        let x = Tensor::from_vec(pixels, (n, 3, side, side), &sd.device)?;
        let z = (sd.vae.encode(&x)?.mean() * sd.vae.scaling_factor())?;
        let images = to_images(&sd.decode(&z)?)?;
        let verdicts = judge.judge_batch(&images)?;
        let right = verdicts
            .iter()
            .zip(&scenes)
            .filter(|(v, sc)| ok(v, sc))
            .count();
        Ok(right as f64 / n.max(1) as f64)
    };
    let shows = |c: Concept| move |v: &fmn_toy_world::Verdict, _: &fmn_toy_world::Scene| v.shows(c);
    Ok(ReconstructionReport {
        any_scene: rate(&SceneSpec::default(), &|v, sc| {
            v.shows(Concept::Object(sc.object)) && v.shows(Concept::Colour(sc.colour))
        })?,
        bob: rate(
            &SceneSpec::only(Concept::Character(Character::Bob)),
            &shows(Concept::Character(Character::Bob)),
        )?,
        kiki: rate(
            &SceneSpec::only(Concept::Character(Character::Kiki)),
            &shows(Concept::Character(Character::Kiki)),
        )?,
        striped: rate(&SceneSpec::only(Concept::Stripes), &shows(Concept::Stripes))?,
        images_per_kind: n,
    })
}

/// The figure's pixels in a toy image: those differing from the background, estimated as the
/// per-channel median of the 1-pixel border, by more than `threshold` in some channel.
pub fn figure_mask(image: &RgbImage, threshold: u8) -> GrayImage {
    let (w, h) = image.dimensions();
    let mut border: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in image.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for c in 0..3 {
                border[c].push(p[c]);
            }
        }
    }
    let bg: Vec<u8> = border
        .iter_mut()
        .map(|v| {
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect();
    GrayImage::from_fn(w, h, |x, y| {
        let p = image.get_pixel(x, y);
        let far = (0..3).any(|c| p[c].abs_diff(bg[c]) > threshold);
        image::Luma([if far { 255 } else { 0 }])
    })
}

fn to_images(decoded: &Tensor) -> Result<Vec<RgbImage>> {
    (0..decoded.dim(0)?)
        .map(|i| Ok(fmn_sd::sample::pipeline::to_rgb_image(&decoded.get(i)?)?))
        .collect()
}

struct Sampled {
    images: Vec<RgbImage>,
    attention: Vec<(usize, AttentionRecord)>,
}

fn sample(
    sd: &StableDiffusion,
    prompt: &str,
    s: &QualitySettings,
    steps: &[usize],
) -> Result<Sampled> {
    let (h, w) = (
        fmn_toy_world::IMAGE_SIZE as usize,
        fmn_toy_world::IMAGE_SIZE as usize,
    );
    let shape = sd.latent_shape(s.seeds, h, w)?;
    let noise = seeded_noise(shape, s.seed, &sd.device)?;
    let out = sd.sample(
        &SampleRequest {
            prompt,
            negative_prompt: "",
            sampler: SamplerKind::Ddim,
            steps: s.steps,
            guidance: s.guidance,
            guidance_rescale: s.guidance_rescale,
            init_noise: noise,
            attention_steps: steps,
            step_seed: s.seed,
        },
        |_| {},
    )?;
    Ok(Sampled {
        images: to_images(&sd.decode(&out.latents)?)?,
        attention: out.attention,
    })
}

/// `(attention share inside the figure, figure share)` summed over images, layers and steps,
/// with the number of terms, for the token at `position`.
fn attention_shares(
    sampled: &Sampled,
    position: usize,
    masks: &[Tensor],
) -> Result<(f64, f64, usize)> {
    let (mut inside, mut share, mut count) = (0.0, 0.0, 0);
    for (_, record) in &sampled.attention {
        let n = record.probs.dim(0)?;
        let map = token_mass(&record.probs, &[position])?.mean(1)?; // [N, pixels]
        for (i, mask) in masks.iter().enumerate().take(n) {
            let m = record.mask_on_grid(mask)?.flatten_all()?;
            let a = map.get(i)?;
            let total = a.sum_all()?.to_scalar::<f32>()? as f64;
            let hit = (&a * &m)?.sum_all()?.to_scalar::<f32>()? as f64;
            if total > 0.0 {
                inside += hit / total;
                share += m.mean_all()?.to_scalar::<f32>()? as f64;
                count += 1;
            }
        }
    }
    Ok((inside, share, count))
}

fn mask_tensor(mask: &GrayImage, device: &candle_core::Device) -> Result<Tensor> {
    let (w, h) = mask.dimensions();
    Ok(Tensor::from_vec(
        mask.as_raw().clone(),
        (1, 1, h as usize, w as usize),
        device,
    )?
    .to_dtype(DType::F32)?
    .affine(1.0 / 255.0, 0.0)?)
}

/// Measures the quality bar; `progress` is told each finished prompt.
pub fn measure(
    sd: &StableDiffusion,
    judge: &Judge,
    s: &QualitySettings,
    mut progress: impl FnMut(&str),
) -> Result<QualityReport> {
    let started = std::time::Instant::now();
    let attention_steps: Vec<usize> = (0..s.steps).step_by((s.steps / 5).max(1)).collect();
    let mut prompts = Vec::new();
    let (mut object_right, mut colour_right, mut plain_striped, mut plain_total) = (0, 0, 0, 0);
    let (mut inside, mut share, mut terms) = (0.0, 0.0, 0);
    for &colour in Colour::ALL.iter() {
        for &object in Object::ALL.iter() {
            let prompt = format!("a photo of a {} {}", colour.word(), object.word());
            let sampled = sample(sd, &prompt, s, &attention_steps)?;
            let verdicts = judge.judge_batch(&sampled.images)?;
            let mut right = 0;
            for v in &verdicts {
                let o = v.shows(Concept::Object(object));
                let c = v.shows(Concept::Colour(colour));
                object_right += o as usize;
                colour_right += c as usize;
                right += (o && c) as usize;
                plain_striped += v.shows(Concept::Stripes) as usize;
                plain_total += 1;
            }
            let ids = sd.tokenizer.encode(&prompt)?;
            let word = sd.tokenizer.tokenize(object.word())?;
            let position = ids
                .iter()
                .position(|&t| word.first() == Some(&t))
                .context("object word not in prompt")?;
            let masks = sampled
                .images
                .iter()
                .map(|im| mask_tensor(&figure_mask(im, 40), &sd.device))
                .collect::<Result<Vec<_>>>()?;
            let (a, b, n) = attention_shares(&sampled, position, &masks)?;
            inside += a;
            share += b;
            terms += n;
            prompts.push(PromptResult {
                prompt: prompt.clone(),
                right,
                images: verdicts.len(),
                verdicts: verdicts.iter().map(|v| v.description()).collect(),
            });
            progress(&prompt);
        }
    }
    let rate = |prompt: String, concept: Concept, prompts: &mut Vec<PromptResult>| -> Result<f64> {
        let sampled = sample(sd, &prompt, s, &[])?;
        let verdicts = judge.judge_batch(&sampled.images)?;
        let right = verdicts.iter().filter(|v| v.shows(concept)).count();
        prompts.push(PromptResult {
            prompt,
            right,
            images: verdicts.len(),
            verdicts: verdicts.iter().map(|v| v.description()).collect(),
        });
        Ok(right as f64 / verdicts.len() as f64)
    };
    let bob_rate = rate(
        "a photo of bob".into(),
        Concept::Character(Character::Bob),
        &mut prompts,
    )?;
    progress("a photo of bob");
    let kiki_rate = rate(
        "a photo of kiki".into(),
        Concept::Character(Character::Kiki),
        &mut prompts,
    )?;
    progress("a photo of kiki");
    let mut styled = 0.0;
    for &colour in Colour::ALL.iter() {
        for &object in Object::ALL.iter() {
            let prompt = format!(
                "a photo of a {} {} in the style of stripes",
                colour.word(),
                object.word()
            );
            styled += rate(prompt.clone(), Concept::Stripes, &mut prompts)?;
            progress(&prompt);
        }
    }
    let pairs = (Colour::ALL.len() * Object::ALL.len()) as f64;
    let images = plain_total.max(1) as f64;
    let attention_in_figure = inside / terms.max(1) as f64;
    let figure_share = share / terms.max(1) as f64;
    Ok(QualityReport {
        object_accuracy: object_right as f64 / images,
        colour_accuracy: colour_right as f64 / images,
        bob_rate,
        kiki_rate,
        striped_with_style: styled / pairs,
        striped_without_style: plain_striped as f64 / images,
        attention_in_figure,
        figure_share,
        attention_ratio: attention_in_figure / figure_share.max(1e-9),
        vae_reconstruction: reconstruction(sd, judge, 4 * s.seeds)?,
        prompts,
        seconds: started.elapsed().as_secs_f64(),
    })
}
