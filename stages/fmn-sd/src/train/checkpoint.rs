//! Checkpoints of a training run (`--checkpoint-every N`, `--resume`): the trained variables,
//! the optimiser state and the step, written atomically; a run resumes only with the settings
//! it was started with.
use crate::train::optim::AdamW;
use crate::{Result, SdError};
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    dir: PathBuf,
    settings: serde_json::Value,
}

const STATE: &str = "state.safetensors";
const PROGRESS: &str = "progress.json";

impl Checkpoint {
    /// A checkpoint folder for a run with `settings` (any JSON; compared on resume).
    pub fn new(dir: &Path, settings: serde_json::Value) -> Self {
        Self {
            dir: dir.to_path_buf(),
            settings,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn save(&self, step: usize, vars: &[(String, Var)], opt: &AdamW) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| SdError::io(&self.dir, e))?;
        let mut tensors: HashMap<String, Tensor> = opt
            .state()?
            .into_iter()
            .map(|(k, v)| (format!("opt/{k}"), v))
            .collect();
        for (name, v) in vars {
            tensors.insert(format!("var/{name}"), v.as_tensor().clone());
        }
        crate::io::weights::save_safetensors_atomic(&self.dir.join(STATE), &tensors, None)?;
        let progress = serde_json::json!({ "step": step, "settings": self.settings });
        let file = self.dir.join(PROGRESS);
        fmn_core::write_json_atomic(&file, &progress).map_err(|e| SdError::io(&file, e))
    }

    /// The step to continue from, after loading the saved state into `vars` and `opt`; `None`
    /// when there is no checkpoint yet.
    pub fn restore(&self, vars: &[(String, Var)], opt: &mut AdamW) -> Result<Option<usize>> {
        let progress_file = self.dir.join(PROGRESS);
        if !progress_file.is_file() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&progress_file).map_err(|e| SdError::io(&progress_file, e))?;
        let p: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SdError::config(&progress_file, format!("not a checkpoint ({e})")))?;
        if p["settings"] != self.settings {
            return Err(SdError::config(
                &progress_file,
                "the checkpoint was made with other settings; resume with the same settings or remove the folder",
            ));
        }
        let step = p["step"]
            .as_u64()
            .ok_or_else(|| SdError::config(&progress_file, "no step recorded"))?
            as usize;
        let file = self.dir.join(STATE);
        let device = vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let state = crate::io::weights::load_tensors(&file, candle_core::DType::F32, &device)?;
        for (name, var) in vars {
            let t = state
                .get(&format!("var/{name}"))
                .ok_or_else(|| SdError::config(&file, format!("`var/{name}` is missing")))?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        let opt_state: HashMap<String, Tensor> = state
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("opt/").map(|k| (k.to_string(), v)))
            .collect();
        opt.load_state(&opt_state)?;
        Ok(Some(step))
    }

    /// Removes the folder once the result is written.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `OUT.ckpt` next to the output file `OUT`.
pub fn folder_for(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".ckpt");
    out.with_file_name(name)
}

/// A run's checkpointing: where (none: never), every how many steps, and whether to resume.
pub struct Schedule {
    checkpoint: Option<Checkpoint>,
    every: usize,
    resume: bool,
}

impl Schedule {
    /// `settings` (any JSON) must match on resume.
    pub fn new(
        dir: Option<&Path>,
        settings: serde_json::Value,
        every: usize,
        resume: bool,
    ) -> Self {
        Self {
            checkpoint: dir.map(|d| Checkpoint::new(d, settings)),
            every,
            resume,
        }
    }

    /// The step to start from: with `resume` and a checkpoint, its step (after loading it into
    /// `vars` and `opt`); else 0.
    pub fn start(&self, vars: &[(String, Var)], opt: &mut AdamW) -> Result<usize> {
        if let (Some(ck), true) = (&self.checkpoint, self.resume) {
            if let Some(step) = ck.restore(vars, opt)? {
                tracing::info!(step, "resuming");
                return Ok(step);
            }
        }
        Ok(0)
    }

    /// Saves once `done` of `total` steps are finished, when `every` divides `done` (never
    /// after the last step: the result is written then).
    pub fn after_step(
        &self,
        done: usize,
        total: usize,
        vars: &[(String, Var)],
        opt: &AdamW,
    ) -> Result<()> {
        if let Some(ck) = &self.checkpoint {
            if self.every > 0 && done.is_multiple_of(self.every) && done < total {
                ck.save(done, vars, opt)?;
            }
        }
        Ok(())
    }
}

/// What a training run (inversion, re-steering) needs besides the model: where to checkpoint, and what to report per step.
pub struct RunOptions<'a> {
    pub checkpoint_dir: Option<&'a Path>,
    pub checkpoint_every: usize,
    pub resume: bool,
    pub on_step: &'a mut dyn FnMut(usize, f64),
}

impl RunOptions<'_> {
    /// The checkpoint schedule these options ask for; `settings` identify the run.
    pub fn schedule(&self, settings: serde_json::Value) -> Schedule {
        Schedule::new(
            self.checkpoint_dir,
            settings,
            self.checkpoint_every,
            self.resume,
        )
    }
}
