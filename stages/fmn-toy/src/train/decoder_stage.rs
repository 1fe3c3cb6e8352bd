//! Stage 3: the VAE decoder alone learns to draw small details back from the frozen encoder's
//! latents. The latents the UNet learned do not change, so the trained UNet stays valid; the
//! per-pixel loss weighs figure pixels `1 + figure_weight` times the background, because a
//! plain MSE at 250 VAE steps loses what covers a few pixels (kiki's eye: reconstructions of
//! kiki were judged kiki 0 of 32 times with the 3,000-step model's VAE).
use super::split_batch::PartThreads;
use super::vae_stage::batch_indices;
use super::{step_seed, Checkpoints, Dataset, TrainSettings};
use anyhow::Result;
use candle_core::{Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::vae::AutoencoderKL;
use fmn_sd::train::optim::{AdamW, AdamWConfig};

pub const STAGE: &str = "decoder";

/// The VAE's decoder-side weights (what the stage trains).
pub fn decoder_vars(vae_vars: &[(String, Var)]) -> Vec<(String, Var)> {
    vae_vars
        .iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .cloned()
        .collect()
}

/// Trains the decoder weights among `vae_vars` (in place) on `latents`, the unscaled encoder
/// means `[N, 4, 16, 16]` of `data.images`; returns the last step's weighted error.
pub fn train(
    s: &TrainSettings,
    data: &Dataset,
    vae: &AutoencoderKL,
    vae_vars: &[(String, Var)],
    latents: &Tensor,
    ckpt: &Checkpoints,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<f64> {
    let device = latents.device().clone();
    let vars = decoder_vars(vae_vars);
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: s.decoder_lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let start = ckpt.restore(s, STAGE, &vars, &mut opt)?;
    let threads = PartThreads::new(s.batch_parts)?;
    let mut last = f64::NAN;
    for step in start..s.decoder_steps {
        let mut rng = NoiseRng::new(step_seed(s.seed, 4, step));
        let (_, idx) = batch_indices(&mut rng, data.len(), s.decoder_batch, &device)?;
        let z = latents.index_select(&idx, 0)?;
        let x = data.images.index_select(&idx, 0)?;
        let weight = ((data.masks.index_select(&idx, 0)? * s.decoder_figure_weight)? + 1.0)?;
        let batch = z.dim(0)?;
        let (grads, loss) = threads.summed_grads(&vars, batch, |r| {
            let part = |t: &Tensor| t.narrow(0, r.start, r.len());
            let recon = vae.decode(&part(&z)?)?;
            let err = (recon - part(&x)?)?.sqr()?.broadcast_mul(&part(&weight)?)?;
            Ok((err.mean_all()? * (r.len() as f64 / batch as f64))?)
        })?;
        opt.step(&grads, Some(1.0))?;
        last = loss;
        on_step(step, last);
        if (step + 1) % s.checkpoint_every == 0 || step + 1 == s.decoder_steps {
            ckpt.save(s, STAGE, step + 1, &vars, &opt)?;
        }
    }
    Ok(last)
}
