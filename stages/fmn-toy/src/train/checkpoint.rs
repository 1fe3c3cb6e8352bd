//! The toy run's checkpoints: `fmn_sd::train::checkpoint`'s folder, with the toy's progress
//! record and the rule for which settings may change on resume.
use super::TrainSettings;
use anyhow::{bail, Result};
use candle_core::Var;
use fmn_sd::train::checkpoint::CheckpointDir;
use fmn_sd::train::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    settings: TrainSettings,
    stage: String,
    step: usize,
}

/// Whether a run with `new` settings may continue a checkpoint of `stage` made with `saved`
/// after `step` steps of it: everything that shaped the finished work must match. The
/// learning rates are constant after warm-up until the UNet's decay window, so the UNet's step
/// count (and the decay length) may change while no finished step lay in either run's window
/// (likewise the attention term's settings, before either run's first step with the term, and
/// the UNet's learning rate, batch, warm-up, caption dropout and loss weighting before its
/// first step):
/// the continued run then equals an uninterrupted one with the new counts. The checkpoint
/// interval and the step counts of later stages may always change.
fn resumable(saved: &TrainSettings, new: &TrainSettings, stage: &str, step: usize) -> bool {
    let mut relaxed = saved.clone();
    relaxed.checkpoint_every = new.checkpoint_every;
    relaxed.decoder_steps = new.decoder_steps;
    // Splitting the batch across threads changes only the float rounding of a step.
    relaxed.batch_parts = new.batch_parts;
    let unet_done = match stage {
        "vae" => 0,
        "unet" => step,
        _ => saved.unet_steps,
    };
    if unet_done <= saved.unet_decay_start() && unet_done <= new.unet_decay_start() {
        relaxed.unet_steps = new.unet_steps;
        relaxed.unet_lr_decay_steps = new.unet_lr_decay_steps;
    }
    if unet_done == 0 {
        // Nothing of the UNet stage exists yet.
        relaxed.unet_lr = new.unet_lr;
        relaxed.unet_batch = new.unet_batch;
        relaxed.warmup_steps = new.warmup_steps;
        relaxed.cfg_dropout = new.cfg_dropout;
        relaxed.min_snr_gamma = new.min_snr_gamma;
        relaxed.figure_edge_weight = new.figure_edge_weight;
        relaxed.zero_terminal_snr = new.zero_terminal_snr;
    }
    if unet_done <= saved.attention_term_start() && unet_done <= new.attention_term_start() {
        relaxed.attention_weight = new.attention_weight;
        relaxed.attention_start = new.attention_start;
    }
    if stage != "decoder" {
        relaxed.decoder_batch = new.decoder_batch;
        relaxed.decoder_lr = new.decoder_lr;
        relaxed.decoder_figure_weight = new.decoder_figure_weight;
    }
    if stage == "vae" {
        relaxed.vae_steps = new.vae_steps;
    }
    &relaxed == new
}

/// The toy run's checkpoints: [`CheckpointDir`]'s files (one `{stage}.safetensors` per
/// stage, `progress.json`), with the toy's own progress record and resume rule
/// ([`resumable`]): one run has three stages.
pub struct Checkpoints {
    dir: CheckpointDir,
}

impl Checkpoints {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: CheckpointDir::new(dir),
        }
    }

    /// The completed step of `stage` to resume from (`None`: start), refusing other settings.
    pub fn resume_point(&self, settings: &TrainSettings, stage: &str) -> Result<Option<usize>> {
        let Some(p) = self.dir.progress::<Progress>()? else {
            return Ok(None);
        };
        let file = self.dir.progress_path();
        if !resumable(&p.settings, settings, &p.stage, p.step) {
            bail!(
                "{}: the checkpoint was made with other settings ({:?}); use another --checkpoints folder or the same settings",
                file.display(),
                p.settings
            );
        }
        let too_many = |stage: &str, done: usize, total: usize| -> Result<()> {
            if done > total {
                bail!(
                    "{}: the {stage} stage already ran {done} steps, more than the {total} asked for",
                    file.display()
                );
            }
            Ok(())
        };
        let total = match p.stage.as_str() {
            "vae" => settings.vae_steps,
            "unet" => settings.unet_steps,
            _ => settings.decoder_steps,
        };
        too_many(&p.stage, p.step, total)?;
        Ok(match (p.stage.as_str(), stage) {
            (s, want) if s == want => Some(p.step),
            ("unet" | "decoder", "vae") => Some(usize::MAX), // the VAE stage finished earlier
            // The UNet stage finished before the decoder stage began; more UNet steps continue
            // from its checkpoint (the decoder stage, which does not depend on the UNet, reruns).
            ("decoder", "unet") => {
                too_many("unet", p.settings.unet_steps, settings.unet_steps)?;
                Some(p.settings.unet_steps)
            }
            _ => None,
        })
    }

    /// Restores `vars` and `opt` from `stage`'s checkpoint if one is due; the step to continue
    /// from (0: start).
    pub fn restore(
        &self,
        settings: &TrainSettings,
        stage: &str,
        vars: &[(String, Var)],
        opt: &mut AdamW,
    ) -> Result<usize> {
        match self.resume_point(settings, stage)? {
            Some(step) => {
                self.load(stage, vars, Some(opt))?;
                Ok(step)
            }
            None => Ok(0),
        }
    }

    /// Saves `vars` and the optimizer under `stage`, then marks `step` as done.
    pub fn save(
        &self,
        settings: &TrainSettings,
        stage: &str,
        step: usize,
        vars: &[(String, Var)],
        opt: &AdamW,
    ) -> Result<()> {
        let progress = Progress {
            settings: settings.clone(),
            stage: stage.to_string(),
            step,
        };
        Ok(self.dir.save(stage, vars, opt, &progress)?)
    }

    /// Restores the weights of `vars` and, if given, the optimizer state saved for `stage`.
    pub fn load(&self, stage: &str, vars: &[(String, Var)], opt: Option<&mut AdamW>) -> Result<()> {
        Ok(self.dir.load(stage, vars, opt)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{resumable, TrainSettings};

    fn settings(unet_steps: usize, decay: usize) -> TrainSettings {
        TrainSettings {
            unet_steps,
            unet_lr_decay_steps: decay,
            ..Default::default()
        }
    }

    #[test]
    fn the_unet_length_and_decay_may_change_only_before_either_decay_window() {
        // 3,500 constant-lr steps done: continuing to 4,500 with a 1,000-step decay is the run
        // that would have happened uninterrupted.
        assert!(resumable(
            &settings(5000, 0),
            &settings(4500, 1000),
            "unet",
            3500
        ));
        // The decay window would have begun before the checkpoint: refused.
        assert!(!resumable(
            &settings(5000, 0),
            &settings(4000, 1000),
            "unet",
            3500
        ));
        // Once decaying, the schedule is fixed.
        assert!(!resumable(
            &settings(4500, 1000),
            &settings(5000, 1000),
            "unet",
            4000
        ));
        assert!(resumable(
            &settings(4500, 1000),
            &settings(4500, 1000),
            "unet",
            4000
        ));
        // A finished decayed UNet stage cannot be lengthened from the decoder stage.
        assert!(!resumable(
            &settings(4500, 1000),
            &settings(5000, 1000),
            "decoder",
            10
        ));
        // Before the UNet stage began, anything about it may change.
        assert!(resumable(
            &settings(4500, 1000),
            &settings(3000, 0),
            "vae",
            100
        ));
        // Other settings still must match.
        let mut other = settings(5000, 0);
        other.unet_lr = 2e-3;
        assert!(!resumable(&settings(5000, 0), &other, "unet", 3500));
        // The attention term may be switched on from the checkpoint's step, not before it.
        let mut attend = settings(4500, 1000);
        attend.attention_weight = 0.1;
        attend.attention_start = 3500;
        assert!(resumable(&settings(5000, 0), &attend, "unet", 3500));
        attend.attention_start = 3000;
        assert!(!resumable(&settings(5000, 0), &attend, "unet", 3500));
        // The batch may be split across another number of threads at any point.
        let mut split = settings(4500, 1000);
        split.batch_parts = 2;
        assert!(resumable(&settings(4500, 1000), &split, "unet", 4000));
        // The loss weighting may change only before the first UNet step.
        let mut weighted = settings(4500, 1000);
        weighted.min_snr_gamma = 5.0;
        assert!(resumable(&settings(4500, 1000), &weighted, "vae", 250));
        assert!(!resumable(&settings(4500, 1000), &weighted, "unet", 50));
        let mut zero_snr = settings(4500, 1000);
        zero_snr.zero_terminal_snr = true;
        assert!(resumable(&settings(4500, 1000), &zero_snr, "vae", 250));
        assert!(!resumable(&settings(4500, 1000), &zero_snr, "unet", 50));
        // So may the UNet's learning rate, batch, warm-up and caption dropout.
        let mut optimiser = settings(4500, 1000);
        optimiser.unet_lr = 2e-3;
        optimiser.unet_batch = 48;
        optimiser.warmup_steps = 10;
        optimiser.cfg_dropout = 0.2;
        assert!(resumable(&settings(4500, 1000), &optimiser, "vae", 250));
        assert!(!resumable(&settings(4500, 1000), &optimiser, "unet", 50));
        // The VAE's own settings may not.
        let mut vae = settings(4500, 1000);
        vae.vae_lr = 2e-3;
        assert!(!resumable(&settings(4500, 1000), &vae, "vae", 250));
    }
}
