//! `fmn-sample`: text-to-image sampling from a diffusers folder, writing PNGs and a manifest,
//! optionally the final latents and cross-attention maps.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod args;
mod images;
mod manifest;
pub mod settings;
mod shard;

pub use args::Args;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use fmn_core::StagingDir;
use fmn_sd::io::attention as attention_file;
use fmn_sd::io::embedding::TokenEmbedding;
use fmn_sd::io::patch::Patch;
use fmn_sd::io::sampling_defaults::resolve_guidance;
use fmn_sd::io::source::ModelSource;
use fmn_sd::models::probes::AttentionRecord;
use fmn_sd::sample::pipeline::{
    check_guidance_rescale, seeded_noise, SampleRequest, StableDiffusion,
};
use manifest::{ImageEntry, Manifest};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;

/// Refuses a request whose estimated peak memory (all `num_images` of a prompt in one batch,
/// doubled by guidance, then decoded) exceeds the budget, before any weight is loaded.
fn preflight(
    source: &ModelSource,
    s: &settings::SampleSettings,
    guidance: f64,
    height: usize,
    width: usize,
    num_images: usize,
    args: &Args,
) -> Result<()> {
    fmn_sd_args::check_sampling_memory(
        source,
        &fmn_sd_args::SamplingRequest {
            height,
            width,
            dtype: s.dtype.dtype(),
            images: num_images,
            guided: guidance > 1.0,
        },
        args.device.memory.max_memory,
        "sampling",
    )?;
    Ok(())
}

/// Parses the command line and samples.
pub fn run() -> Result<ExitCode> {
    fmn_sd_args::run_stage(execute)
}

pub fn execute(args: &Args) -> Result<ExitCode> {
    let s = args.settings()?;
    let prompts = s.prompts()?;
    check_guidance_rescale(s.guidance_rescale).context("--guidance-rescale")?;
    let device = s.device()?;
    let model_dir = s.model_dir();
    let guidance = resolve_guidance(s.guidance, &model_dir)?;
    let init = match &args.init_latents {
        Some(path) => Some(load_init_latents(path, &device)?),
        None => None,
    };
    let patches = s
        .patch
        .iter()
        .map(|p| Patch::load(p).with_context(|| format!("cannot load the patch {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let load_context = || {
        let names: Vec<String> = s.patch.iter().map(|p| p.display().to_string()).collect();
        match names.len() {
            0 => format!("cannot load the model {}", model_dir.display()),
            _ => format!(
                "cannot load the model {} with the patches {}",
                model_dir.display(),
                names.join(", ")
            ),
        }
    };
    let source = args.model.open_at(&model_dir).with_context(load_context)?;
    let (height, width) = s.size(&source, init.as_ref())?;
    let num_images = match (&init, s.num_images) {
        (Some(t), Some(n)) if t.dim(0)? != n => bail!(
            "--init-latents holds {} latents but --num-images is {n}",
            t.dim(0)?
        ),
        (Some(t), _) => t.dim(0)?,
        (None, n) => n.unwrap_or(1),
    };
    preflight(&source, &s, guidance, height, width, num_images, args)?;
    let mut model = StableDiffusion::load_source(&source, &device, s.dtype.dtype(), &patches)
        .with_context(load_context)?;
    if !s.embedding.is_empty() {
        let mut embeddings = Vec::new();
        let mut names = Vec::new();
        for p in &s.embedding {
            embeddings.push(
                TokenEmbedding::load(p)
                    .with_context(|| format!("cannot load the embedding {}", p.display()))?,
            );
            names.push(p.display().to_string());
        }
        model.add_embeddings(embeddings, &names)?;
    }

    let shape = model.latent_shape(num_images, height, width)?;
    if let (Some(t), Some(path)) = (&init, &args.init_latents) {
        if t.dims() != shape {
            bail!(
                "{}: tensor `latents` has shape {:?}, expected {:?} for {width}x{height} images",
                path.display(),
                t.dims(),
                shape
            );
        }
    }
    let attention_steps = s.attention_steps(args.save_attention.as_deref())?;

    let staging = StagingDir::new(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let shard = args.shard.shard;
    let batches: Vec<Vec<usize>> = (0..prompts.len())
        .map(|pi| shard::images_of(shard, pi, num_images))
        .collect();
    let total_steps = (batches.iter().filter(|ks| !ks.is_empty()).count() * s.steps) as u64;
    let bar = args.output.bar(total_steps, "sampling");
    let mut entries = Vec::new();
    let mut all_latents = Vec::new();
    let mut attention: BTreeMap<String, Vec<AttentionRecord>> = BTreeMap::new();
    for (pi, prompt) in prompts.iter().enumerate() {
        let ks = &batches[pi];
        if ks.is_empty() {
            continue;
        }
        let noise = match &init {
            _ if ks.len() < num_images => {
                let per_image = [1, shape[1], shape[2], shape[3]];
                shard::noise(per_image, ks, s.seed, init.as_ref(), &device)?
            }
            Some(t) => t.clone(),
            None => seeded_noise(shape, s.seed, &device)?,
        };
        let out = model.sample(
            &SampleRequest {
                prompt,
                negative_prompt: &s.negative_prompt,
                sampler: s.scheduler,
                steps: s.steps,
                guidance,
                guidance_rescale: s.guidance_rescale,
                init_noise: noise,
                attention_steps: &attention_steps,
                step_seed: fmn_sd::sample::pipeline::step_seed(s.seed),
            },
            |_| bar.inc(1),
        )?;
        let images = model.decode(&out.latents)?;
        for (row, &k) in ks.iter().enumerate() {
            let file = format!("p{pi:03}_n{k:02}.png");
            images::save_png(&images.get(row)?, &staging.path().join(&file))?;
            entries.push(ImageEntry {
                file,
                prompt_index: pi,
                prompt: prompt.clone(),
                image_index: k,
                seed: init.is_none().then(|| s.seed.wrapping_add(k as u64)),
            });
        }
        all_latents.push(out.latents);
        for (step, record) in out.attention {
            attention
                .entry(attention_file::key(step, &record))
                .or_default()
                .push(record);
        }
    }
    bar.finish_and_clear();

    if let Some(path) = &args.save_latents {
        let latents = Tensor::cat(&all_latents, 0)?;
        save_tensors(path, &HashMap::from([("latents".to_string(), latents)]))?;
    }
    if let Some(path) = &args.save_attention {
        // Each key's rows, prompt by prompt, as one record of every image.
        let records = attention
            .into_iter()
            .map(|(k, rows)| {
                let probs: Vec<&Tensor> = rows.iter().map(|r| &r.probs).collect();
                Ok((k, rows[0].with_probs(Tensor::cat(&probs, 0)?)))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        attention_file::save(path, &records)?;
    }
    let manifest = Manifest {
        fmn_version: fmn_core::VERSION.into(),
        model: model_dir.display().to_string(),
        prompts: prompts.clone(),
        negative_prompt: s.negative_prompt.clone(),
        scheduler: s.scheduler.to_string(),
        steps: s.steps,
        guidance,
        guidance_rescale: s.guidance_rescale,
        width,
        height,
        seed: s.seed,
        num_images,
        init_latents: args.init_latents.as_ref().map(|p| p.display().to_string()),
        patches: s.patch.iter().map(|p| p.display().to_string()).collect(),
        embeddings: s
            .embedding
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        shard,
        images: entries,
    };
    fmn_core::write_json_atomic(&staging.path().join("manifest.json"), &manifest)?;
    let out = staging
        .commit(&["manifest.json"])
        .with_context(|| format!("cannot move the results into {}", args.out.display()))?;
    if args.output.json {
        println!("{}", serde_json::to_string(&manifest)?);
    } else if !args.output.quiet {
        eprintln!(
            "wrote {} images to {}",
            manifest.images.len(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn load_init_latents(path: &Path, device: &Device) -> Result<Tensor> {
    fmn_sd::io::weights::validate_safetensors(path)?;
    let mut tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let t = tensors.remove("latents").with_context(|| {
        format!(
            "{}: no tensor named `latents` (expected [N, 4, h, w])",
            path.display()
        )
    })?;
    if t.rank() != 4 {
        bail!(
            "{}: tensor `latents` has shape {:?}, expected [N, 4, h, w]",
            path.display(),
            t.dims()
        );
    }
    Ok(t.to_dtype(DType::F32)?)
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    fmn_sd::io::weights::save_safetensors_atomic(path, tensors, None)
        .with_context(|| format!("cannot write {}", path.display()))
}
