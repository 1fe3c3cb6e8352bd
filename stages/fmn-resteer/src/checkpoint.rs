//! Checkpoints of a run (`--checkpoint-every N`, `--resume`): the trained variables, the
//! optimiser state and the step, written atomically; a resumed run must have the same settings.
use crate::config::ResteerConfig;
use crate::ResteerError;
use candle_core::{Tensor, Var};
use fmn_sd::optim::AdamW;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    dir: PathBuf,
    settings: serde_json::Value,
}

const STATE: &str = "state.safetensors";
const PROGRESS: &str = "progress.json";

impl Checkpoint {
    pub fn new(dir: &Path, cfg: &ResteerConfig) -> Self {
        Self {
            dir: dir.to_path_buf(),
            settings: serde_json::to_value(cfg).unwrap_or_default(),
        }
    }

    pub fn save(
        &self,
        step: usize,
        vars: &[(String, Var)],
        opt: &AdamW,
    ) -> Result<(), ResteerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ResteerError::io(&self.dir, e))?;
        let mut tensors: HashMap<String, Tensor> = opt
            .state()?
            .into_iter()
            .map(|(k, v)| (format!("opt/{k}"), v))
            .collect();
        for (name, v) in vars {
            tensors.insert(format!("var/{name}"), v.as_tensor().clone());
        }
        fmn_sd::weights::save_safetensors_atomic(&self.dir.join(STATE), &tensors, None)?;
        let progress = serde_json::json!({ "step": step, "settings": self.settings });
        fmn_core::write_json_atomic(&self.dir.join(PROGRESS), &progress)
            .map_err(|e| ResteerError::io(&self.dir.join(PROGRESS), e))?;
        Ok(())
    }

    /// The step to continue from, after loading the saved state into `vars` and `opt`; `None`
    /// when there is no checkpoint yet.
    pub fn restore(
        &self,
        vars: &[(String, Var)],
        opt: &mut AdamW,
    ) -> Result<Option<usize>, ResteerError> {
        let progress_file = self.dir.join(PROGRESS);
        if !progress_file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&progress_file)
            .map_err(|e| ResteerError::io(&progress_file, e))?;
        let p: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            ResteerError::Input(format!(
                "{}: not a checkpoint ({e})",
                progress_file.display()
            ))
        })?;
        if p["settings"] != self.settings {
            return Err(ResteerError::Input(format!(
                "{}: the checkpoint was made with other settings; resume with the same settings or remove the folder",
                progress_file.display()
            )));
        }
        let step = p["step"].as_u64().ok_or_else(|| {
            ResteerError::Input(format!("{}: no step recorded", progress_file.display()))
        })? as usize;
        let file = self.dir.join(STATE);
        let device = vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let state = fmn_sd::weights::load_tensors(&file, candle_core::DType::F32, &device)?;
        for (name, var) in vars {
            let t = state.get(&format!("var/{name}")).ok_or_else(|| {
                ResteerError::Input(format!("{}: `var/{name}` is missing", file.display()))
            })?;
            var.set(t)?;
        }
        let opt_state: HashMap<String, Tensor> = state
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("opt/").map(|k| (k.to_string(), v)))
            .collect();
        opt.load_state(&opt_state)?;
        Ok(Some(step))
    }

    /// Removes the folder once the patch is written.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
