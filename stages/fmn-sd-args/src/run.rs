//! What a training stage's command line does around the run: checkpoints beside the output
//! (`--checkpoint-every`, `--resume`), the progress bar (hidden with `-q`), and removing the
//! checkpoint folder once the output is written. The output is locked for the whole run, so
//! that a second run given the same `--out` (and its checkpoints) fails at once.
use crate::TrainingStageArgs;
use fmn_sd::train::checkpoint::CheckpointDir;
use fmn_sd::train::scaffold::{RunControl, StepRecord};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

pub struct TrainingRun {
    bar: ProgressBar,
    checkpoint_dir: Option<PathBuf>,
    every: usize,
    resume: bool,
    _lock: fmn_core::OutputLock,
}

impl TrainingRun {
    /// A run of `steps` steps labelled `what`, whose result goes to `out`; fails if another
    /// process is writing `out`.
    pub fn new(
        stage: &TrainingStageArgs,
        out: &Path,
        steps: usize,
        what: &str,
    ) -> Result<Self, fmn_core::LockError> {
        let lock = fmn_core::OutputLock::acquire(out)?;
        Ok(Self {
            bar: stage.output.bar(steps as u64, what),
            checkpoint_dir: stage.run.checkpoint_dir(out),
            every: stage.run.checkpoint_every,
            resume: stage.run.resume,
            _lock: lock,
        })
    }

    /// The scaffold's run control: checkpoints as asked, each step shown on the bar.
    pub fn control(&self) -> RunControl<'_> {
        let bar = &self.bar;
        RunControl {
            checkpoint_dir: self.checkpoint_dir.clone(),
            checkpoint_every: self.every,
            resume: self.resume,
            on_step: Box::new(move |r: &StepRecord| {
                bar.set_position(r.step as u64 + 1);
                bar.set_message(format!("loss {:.4}", r.loss));
                tracing::debug!(step = r.step, loss = r.loss);
            }),
        }
    }

    /// Clears the bar; call when the run's steps are done.
    pub fn steps_done(&self) {
        self.bar.finish_and_clear();
    }

    /// Removes the checkpoint folder: call once the output is written.
    pub fn output_written(self) {
        if let Some(dir) = &self.checkpoint_dir {
            CheckpointDir::new(dir).remove();
        }
    }
}
