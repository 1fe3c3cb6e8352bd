//! Stage 1: the VAE learns to reconstruct the rendered images through 16×16×4 latents.
use super::architecture::LATENT_SIZE;
use super::split_batch::PartThreads;
use super::{architecture, step_seed, Checkpoints, Dataset, TrainSettings};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use fmn_sd::train::init::SeededVars;
use fmn_sd::train::optim::{AdamW, AdamWConfig};

pub const STAGE: &str = "vae";

pub struct TrainedVae {
    pub vae: AutoencoderKL,
    pub vars: Vec<(String, Var)>,
    pub final_loss: f64,
}

/// Random batch indices for one step.
pub fn batch_indices(
    rng: &mut NoiseRng,
    n: usize,
    batch: usize,
    device: &Device,
) -> Result<(Vec<u32>, Tensor)> {
    let idx: Vec<u32> = (0..batch).map(|_| rng.below(0, n) as u32).collect();
    let t = Tensor::new(idx.as_slice(), device)?;
    Ok((idx, t))
}

pub fn train(
    s: &TrainSettings,
    data: &Dataset,
    ckpt: &Checkpoints,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<TrainedVae> {
    let device = data.images.device().clone();
    let seeded = SeededVars::new(step_seed(s.seed, 1, usize::MAX));
    let cfg: AutoencoderKLConfig = serde_json::from_value(architecture::vae_config(1.0))?;
    let vae = AutoencoderKL::new(seeded.var_builder(DType::F32, &device), &cfg)?;
    let vars = seeded.sorted();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: s.vae_lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let start = match ckpt.resume_point(s, STAGE)? {
        Some(usize::MAX) => {
            ckpt.load(STAGE, &vars, None)?;
            s.vae_steps
        }
        Some(step) => {
            ckpt.load(STAGE, &vars, Some(&mut opt))?;
            step
        }
        None => 0,
    };
    let threads = PartThreads::new(s.batch_parts)?;
    let mut last = f64::NAN;
    for step in start..s.vae_steps {
        let mut rng = NoiseRng::new(step_seed(s.seed, 1, step));
        let (_, idx) = batch_indices(&mut rng, data.len(), s.vae_batch, &device)?;
        let x = data.images.index_select(&idx, 0)?;
        let batch = x.dim(0)?;
        let latent = [batch, cfg.latent_channels, LATENT_SIZE, LATENT_SIZE];
        let eps = rng.randn(&latent, &device)?;
        // The reconstruction error alone is what the step reports.
        let rec_total = std::sync::Mutex::new(0f64);
        let (grads, _) = threads.summed_grads(&vars, batch, |r| {
            let part = |t: &Tensor| t.narrow(0, r.start, r.len());
            let x = part(&x)?;
            let posterior = vae.encode(&x)?;
            let z = posterior.sample_with(&part(&eps)?)?;
            let recon = vae.decode(&z)?;
            let share = r.len() as f64 / batch as f64;
            let rec = ((recon - &x)?.sqr()?.mean_all()? * share)?;
            let kl = (posterior.kl()?.mean_all()? * (s.vae_kl_weight * share))?;
            let value = rec.to_scalar::<f32>()? as f64;
            *rec_total
                .lock()
                .map_err(|_| anyhow::anyhow!("a batch part panicked while adding its loss"))? +=
                value;
            Ok((&rec + kl)?)
        })?;
        opt.step(&grads, Some(1.0))?;
        last = rec_total
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a batch part panicked while adding its loss"))?;
        on_step(step, last);
        if (step + 1) % s.checkpoint_every == 0 || step + 1 == s.vae_steps {
            ckpt.save(s, STAGE, step + 1, &vars, &opt)?;
        }
    }
    Ok(TrainedVae {
        vae,
        vars,
        final_loss: last,
    })
}

/// The latent means of every image (no gradient), `[N, 4, 16, 16]`, the images split into
/// `parts` ranges encoded on parallel threads.
pub fn encode_all(vae: &AutoencoderKL, images: &Tensor, parts: usize) -> Result<Tensor> {
    let n = images.dim(0)?;
    let threads = PartThreads::new(parts)?;
    let encoded = threads.map(n, |r| {
        let mut out = Vec::new();
        let mut i = r.start;
        while i < r.end {
            let len = 64.min(r.end - i);
            let x = images.narrow(0, i, len)?.detach();
            out.push(vae.encode(&x)?.mean().detach());
            i += len;
        }
        Ok(Tensor::cat(&out, 0)?)
    })?;
    Ok(Tensor::cat(&encoded, 0)?)
}
