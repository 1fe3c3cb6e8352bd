//! Checkpoints of training runs (`--checkpoint-every N`, `--resume`), one folder per run:
//! per stage `{stage}.safetensors` (the trained variables under `var/NAME`, the optimiser
//! state under `opt/KEY`) and `progress.json` (what the run has done, written last), each
//! written atomically, so a run killed at any moment leaves either the previous checkpoint or
//! the new one. What `progress.json` holds, and when a run may continue from it, is the run's
//! own: [`RunProgress`] for single-stage runs (the same settings, or refused).
use crate::train::optim::AdamW;
use crate::{Result, SdError};
use candle_core::{Tensor, Var};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const PROGRESS: &str = "progress.json";

/// A run's checkpoint folder.
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// `progress.json`, for errors that name it.
    pub fn progress_path(&self) -> PathBuf {
        self.dir.join(PROGRESS)
    }

    fn state_file(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("{stage}.safetensors"))
    }

    /// The recorded progress, `None` when no checkpoint was written yet.
    pub fn progress<P: DeserializeOwned>(&self) -> Result<Option<P>> {
        let file = self.progress_path();
        if !file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&file).map_err(|e| SdError::io(&file, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SdError::config(&file, format!("not a checkpoint ({e})")))
    }

    /// Saves `vars` and `opt`'s state as `stage`, then `progress`.
    pub fn save<P: Serialize>(
        &self,
        stage: &str,
        vars: &[(String, Var)],
        opt: &AdamW,
        progress: &P,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| SdError::io(&self.dir, e))?;
        let mut tensors: HashMap<String, Tensor> = opt
            .state()?
            .into_iter()
            .map(|(k, v)| (format!("opt/{k}"), v))
            .collect();
        for (name, v) in vars {
            tensors.insert(format!("var/{name}"), v.as_tensor().clone());
        }
        crate::io::weights::save_safetensors_atomic(&self.state_file(stage), &tensors, None)?;
        let file = self.progress_path();
        fmn_core::write_json_atomic(&file, progress).map_err(|e| SdError::io(&file, e))
    }

    /// Loads `stage`'s saved values into `vars` and, if given, its optimiser state into `opt`.
    pub fn load(&self, stage: &str, vars: &[(String, Var)], opt: Option<&mut AdamW>) -> Result<()> {
        let file = self.state_file(stage);
        let device = vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let state = crate::io::weights::load_tensors(&file, candle_core::DType::F32, &device)?;
        for (name, var) in vars {
            let t = state
                .get(&format!("var/{name}"))
                .ok_or_else(|| SdError::config(&file, format!("`var/{name}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(SdError::config(
                    &file,
                    format!(
                        "`var/{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        if let Some(opt) = opt {
            let opt_state: HashMap<String, Tensor> = state
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("opt/").map(|k| (k.to_string(), v)))
                .collect();
            opt.load_state(&opt_state)?;
        }
        Ok(())
    }

    /// Removes the folder once the run's result is written.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The progress of a single-stage run: its finished steps and the settings that identify it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunProgress {
    pub step: usize,
    pub settings: serde_json::Value,
}

impl RunProgress {
    /// A run with `settings` and `steps` steps may continue from this progress of `dir`.
    pub fn check(
        &self,
        dir: &CheckpointDir,
        settings: &serde_json::Value,
        steps: usize,
    ) -> Result<()> {
        let file = dir.progress_path();
        if &self.settings != settings {
            return Err(SdError::config(
                &file,
                "the checkpoint was made with other settings; resume with the same settings or remove the folder",
            ));
        }
        if self.step > steps {
            return Err(SdError::config(
                &file,
                format!(
                    "the checkpoint is at step {}, past the run's {steps} steps",
                    self.step
                ),
            ));
        }
        Ok(())
    }
}
