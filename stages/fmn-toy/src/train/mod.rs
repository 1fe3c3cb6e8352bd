//! `fmn-toy train`: trains the toy world's VAE, then its text encoder and UNet together, from
//! rendered images and captions, on the CPU, deterministically from a seed; resumable.
pub mod architecture;
mod attention_term;
mod checkpoint;
mod dataset;
mod decoder_stage;
mod diffusion_stage;
mod export;
mod split_batch;
mod vae_stage;

pub use checkpoint::Checkpoints;
pub use dataset::{extend_planar_pixels, Dataset, Example};
pub use export::export_model;

use serde::{Deserialize, Serialize};

/// Everything that determines a training run (written into checkpoints: resuming with other
/// settings is refused). A key missing from a config file keeps its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub seed: u64,
    /// Rendered training images (`images` in settings written before the flag was `--renders`).
    #[serde(alias = "images")]
    pub renders: usize,
    pub vae_steps: usize,
    pub vae_batch: usize,
    pub vae_lr: f64,
    /// Weight of the KL term against the per-pixel reconstruction error.
    pub vae_kl_weight: f64,
    pub unet_steps: usize,
    pub unet_batch: usize,
    pub unet_lr: f64,
    /// The last `unet_lr_decay_steps` UNet steps decay the learning rate linearly towards 0
    /// (0: constant to the end).
    pub unet_lr_decay_steps: usize,
    /// Weight of the term that pulls each caption's subject word's cross-attention onto its
    /// figure (`train/attention_term.rs`); 0: off.
    pub attention_weight: f64,
    /// The first UNet step that uses the attention term.
    pub attention_start: usize,
    /// Min-SNR-γ loss weighting of the diffusion stage (Hang et al. 2023, arXiv 2303.09556):
    /// each row's error is weighted `min(SNR_t, γ) / SNR_t` (with `zero_terminal_snr`, see
    /// `timestep_weight`), so the nearly clean timesteps stop dominating the gradient; 0: off
    /// (every timestep weighted 1).
    pub min_snr_gamma: f64,
    /// Weight of the figure's outline in the diffusion loss: a latent cell whose 4×4 pixels the
    /// figure covers to the fraction `m` weighs `1 + figure_edge_weight · 4m(1 − m)` (interior
    /// and background 1, a half-covered cell `1 + figure_edge_weight`), since an object's shape
    /// is told apart only by its outline cells; 0: off.
    pub figure_edge_weight: f64,
    /// The noise schedule of Lin et al. 2023 (arXiv 2305.08891) instead of SD 1.x's: betas
    /// rescaled so that the last timestep keeps no signal (SD's keeps 0.47 %, which a 16×16
    /// latent's figure can be read from, so at sampling time the seed's noise picks the
    /// shape), velocity prediction (epsilon cannot be predicted from a signal-free input) and
    /// "trailing" DDIM timesteps, so that sampling starts at that last timestep. The exported
    /// scheduler config says so (`rescale_betas_zero_snr`, `prediction_type: v_prediction`,
    /// `timestep_spacing: trailing`), as diffusers reads it.
    pub zero_terminal_snr: bool,
    /// Linear learning-rate warm-up of the diffusion stage.
    pub warmup_steps: usize,
    /// Each step's batch is cut into this many parts whose gradients are computed on parallel
    /// threads and summed (`train/split_batch.rs`): the same step up to float rounding, faster
    /// on more than one core.
    pub batch_parts: usize,
    /// Share of captions replaced by "" so that classifier-free guidance works.
    pub cfg_dropout: f64,
    pub checkpoint_every: usize,
    /// Steps of the third stage: the VAE decoder alone is fine-tuned on the frozen encoder's
    /// latents (so the trained UNet stays valid), with figure pixels weighted up so that small
    /// details (kiki's eye, bob's face) survive decoding. 0 skips the stage.
    pub decoder_steps: usize,
    pub decoder_batch: usize,
    pub decoder_lr: f64,
    /// Per-pixel loss weight `1 + decoder_figure_weight · mask` (mask 1 on the figure).
    pub decoder_figure_weight: f64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            seed: 0,
            renders: 6000,
            vae_steps: 800,
            vae_batch: 16,
            vae_lr: 1e-3,
            vae_kl_weight: 1e-6,
            unet_steps: 2500,
            unet_batch: 32,
            unet_lr: 1e-3,
            unet_lr_decay_steps: 0,
            attention_weight: 0.0,
            attention_start: 0,
            min_snr_gamma: 0.0,
            figure_edge_weight: 0.0,
            zero_terminal_snr: false,
            warmup_steps: 100,
            batch_parts: 1,
            cfg_dropout: 0.1,
            checkpoint_every: 100,
            decoder_steps: 400,
            decoder_batch: 16,
            decoder_lr: 5e-4,
            decoder_figure_weight: 4.0,
        }
    }
}

impl TrainSettings {
    /// The first UNet step of the learning-rate decay (`usize::MAX`: none).
    pub fn unet_decay_start(&self) -> usize {
        if self.unet_lr_decay_steps == 0 {
            usize::MAX
        } else {
            self.unet_steps.saturating_sub(self.unet_lr_decay_steps)
        }
    }

    /// The first UNet step of the attention term (`usize::MAX`: none).
    pub fn attention_term_start(&self) -> usize {
        if self.attention_weight == 0.0 {
            usize::MAX
        } else {
            self.attention_start
        }
    }

    /// The diffusion loss's weight of a row at signal fraction `alpha_bar` (1 when
    /// `min_snr_gamma` is 0). Epsilon loss: `min(SNR, γ) / SNR`. Velocity loss (with
    /// `zero_terminal_snr`), whose own weight in x0 terms is `SNR + 1`: `min(SNR + 1, γ) /
    /// (SNR + 1)` — capped like min-SNR, but never 0, unlike the paper's `min(SNR, γ) / (SNR +
    /// 1)`, which would not train the signal-free last timesteps at all.
    pub fn timestep_weight(&self, alpha_bar: f64) -> f64 {
        if self.min_snr_gamma == 0.0 {
            return 1.0;
        }
        let snr = alpha_bar / (1.0 - alpha_bar);
        if self.zero_terminal_snr {
            (snr + 1.0).min(self.min_snr_gamma) / (snr + 1.0)
        } else {
            snr.min(self.min_snr_gamma) / snr
        }
    }

    /// The UNet stage's learning rate at `step` (0-based): linear warm-up, constant, then the
    /// linear decay (step `start + i` of the window uses `lr · (1 − i / decay_steps)`).
    pub fn unet_lr_at(&self, step: usize) -> f64 {
        let warm = ((step + 1) as f64 / self.warmup_steps.max(1) as f64).min(1.0);
        let decay = match step.checked_sub(self.unet_decay_start()) {
            Some(i) => 1.0 - i as f64 / self.unet_lr_decay_steps as f64,
            None => 1.0,
        };
        self.unet_lr * warm * decay
    }
}

/// What a finished run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub vae_final_loss: f64,
    pub unet_final_loss: f64,
    pub scaling_factor: f64,
    pub vae_seconds: f64,
    pub unet_seconds: f64,
    /// Final weighted reconstruction error of the decoder stage (NaN when skipped).
    #[serde(default)]
    pub decoder_final_loss: f64,
    #[serde(default)]
    pub decoder_seconds: f64,
}

/// Seeds for step `step` of `stage`: derived, so that a resumed run draws exactly what an
/// uninterrupted one would.
pub(crate) fn step_seed(seed: u64, stage: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stage << 40)
        .wrapping_add(step as u64)
}

/// Trains both stages (resuming from `checkpoints` where a run stopped) and writes the
/// diffusers folder `out`.
pub fn train(
    settings: &TrainSettings,
    examples: &[Example],
    clip_tokenizer: &std::path::Path,
    checkpoints: &std::path::Path,
    out: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<TrainReport> {
    use anyhow::Context;
    let device = candle_core::Device::Cpu;
    let tokenizer = fmn_sd::io::tokenizer::ClipTokenizer::from_files(
        &clip_tokenizer.join("vocab.json"),
        &clip_tokenizer.join("merges.txt"),
    )
    .context("cannot load the CLIP tokenizer")?;
    let data = Dataset::new(examples, &tokenizer, &device)?;
    let ckpt = Checkpoints::new(checkpoints);

    let started = std::time::Instant::now();
    let bar = fmn_cli::progress::bar(settings.vae_steps as u64, "vae", quiet);
    let vae = vae_stage::train(settings, &data, &ckpt, &mut |step, loss| {
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("vae {loss:.4}"));
        if step % 50 == 0 {
            tracing::info!(step, loss, "vae");
        }
    })?;
    bar.finish_and_clear();
    let vae_seconds = started.elapsed().as_secs_f64();

    let latents =
        vae_stage::encode_all(&vae.vae, &data.images, settings.batch_parts)?.contiguous()?;
    let std = latents.flatten_all()?.to_dtype(candle_core::DType::F64)?;
    let mean = std.mean_all()?.to_scalar::<f64>()?;
    let var = std
        .broadcast_sub(&candle_core::Tensor::new(mean, &device)?)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()?;
    // As Stable Diffusion's 0.18215: the factor that gives the latents unit variance.
    let scaling_factor = 1.0 / var.sqrt();
    let scaled = (&latents * scaling_factor)?;

    let started = std::time::Instant::now();
    let bar = fmn_cli::progress::bar(settings.unet_steps as u64, "unet", quiet);
    let diffusion = diffusion_stage::train(settings, &data, &scaled, &ckpt, &mut |step, loss| {
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("unet {loss:.4}"));
        if step % 50 == 0 {
            tracing::info!(step, loss, "unet");
        }
    })?;
    bar.finish_and_clear();
    let unet_seconds = started.elapsed().as_secs_f64();

    let started = std::time::Instant::now();
    let bar = fmn_cli::progress::bar(settings.decoder_steps as u64, "decoder", quiet);
    let decoder_final_loss = decoder_stage::train(
        settings,
        &data,
        &vae.vae,
        &vae.vars,
        &latents,
        &ckpt,
        &mut |step, loss| {
            bar.set_position(step as u64 + 1);
            bar.set_message(format!("decoder {loss:.4}"));
            if step % 50 == 0 {
                tracing::info!(step, loss, "decoder");
            }
        },
    )?;
    bar.finish_and_clear();
    let report = TrainReport {
        vae_final_loss: vae.final_loss,
        unet_final_loss: diffusion.final_loss,
        scaling_factor,
        vae_seconds,
        unet_seconds,
        decoder_final_loss,
        decoder_seconds: started.elapsed().as_secs_f64(),
    };
    let record = serde_json::json!({ "settings": settings, "report": report, "fmn_version": fmn_core::VERSION });
    export_model(
        out,
        &diffusion.unet_vars,
        &diffusion.text_vars,
        &vae.vars,
        scaling_factor,
        &architecture::scheduler_config(settings.zero_terminal_snr),
        &architecture::sampling_defaults(settings.zero_terminal_snr),
        clip_tokenizer,
        &record,
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::TrainSettings;

    #[test]
    fn unet_learning_rate_warms_up_holds_and_decays_linearly() {
        let s = TrainSettings {
            unet_lr: 1e-3,
            warmup_steps: 10,
            unet_steps: 100,
            unet_lr_decay_steps: 20,
            ..Default::default()
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(s.unet_lr_at(0), 1e-4));
        assert!(close(s.unet_lr_at(9), 1e-3));
        assert!(close(s.unet_lr_at(79), 1e-3));
        assert!(close(s.unet_lr_at(80), 1e-3));
        assert!(close(s.unet_lr_at(90), 5e-4));
        assert!(close(s.unet_lr_at(99), 5e-5));
        let constant = TrainSettings {
            unet_lr_decay_steps: 0,
            ..s
        };
        assert!(close(constant.unet_lr_at(99), 1e-3));
        assert_eq!(constant.unet_decay_start(), usize::MAX);
    }

    #[test]
    fn min_snr_weight_caps_the_signal_to_noise_ratio_at_gamma() {
        let s = TrainSettings {
            min_snr_gamma: 5.0,
            ..Default::default()
        };
        // alpha_bar 0.9: SNR 9, weight 5 / 9; alpha_bar 0.5: SNR 1 < 5, weight 1.
        assert!((s.timestep_weight(0.9) - 5.0 / 9.0).abs() < 1e-12);
        assert!((s.timestep_weight(0.5) - 1.0).abs() < 1e-12);
        assert!((s.timestep_weight(0.99) - 5.0 / 99.0).abs() < 1e-12);
        let off = TrainSettings::default();
        assert_eq!(off.timestep_weight(0.99), 1.0);
    }

    #[test]
    fn velocity_weight_caps_snr_plus_one_and_keeps_the_signal_free_step() {
        let s = TrainSettings {
            min_snr_gamma: 5.0,
            zero_terminal_snr: true,
            ..Default::default()
        };
        // alpha_bar 0.9: SNR + 1 = 10, weight 5 / 10; 0.5: 2 < 5, weight 1; 0: SNR 0, weight 1.
        assert!((s.timestep_weight(0.9) - 0.5).abs() < 1e-12);
        assert!((s.timestep_weight(0.5) - 1.0).abs() < 1e-12);
        assert!((s.timestep_weight(0.0) - 1.0).abs() < 1e-12);
        assert!((s.timestep_weight(0.99) - 5.0 / 100.0).abs() < 1e-12);
    }
}
