//! `sampling_defaults.json` in a model folder: how the model wants to be sampled when the user
//! does not say (diffusers ignores the file). fmn writes it for its toy models.
use crate::{Result, SdError};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE_NAME: &str = "sampling_defaults.json";

/// diffusers' `StableDiffusionPipeline` default guidance scale, used when the folder names none.
pub const DIFFUSERS_GUIDANCE: f64 = 7.5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    /// Classifier-free guidance scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
}

impl SamplingDefaults {
    /// The defaults of `model` (a diffusers folder): none when it has no `sampling_defaults.json`
    /// (or is a single-file checkpoint); an error naming the file and field when it is invalid.
    pub fn load(model: &Path) -> Result<Self> {
        let path = model.join(FILE_NAME);
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| SdError::io(&path, e))?;
        let defaults: Self =
            serde_json::from_str(&text).map_err(|e| SdError::config(&path, e.to_string()))?;
        if let Some(g) = defaults.guidance_scale {
            if !(g.is_finite() && g >= 0.0) {
                return Err(SdError::config(
                    &path,
                    format!("`guidance_scale` must be a finite number ≥ 0, got {g}"),
                ));
            }
        }
        Ok(defaults)
    }

    /// The guidance to sample with: the folder's, else diffusers' default.
    pub fn guidance(&self) -> f64 {
        self.guidance_scale.unwrap_or(DIFFUSERS_GUIDANCE)
    }
}

/// The guidance a user `given` (flag or config), else `model`'s folder default, else 7.5; the
/// folder's file is only read when nothing was given.
pub fn resolve_guidance(given: Option<f64>, model: &Path) -> Result<f64> {
    match given {
        Some(g) => Ok(g),
        None => Ok(SamplingDefaults::load(model)?.guidance()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_means_diffusers_default_and_bad_values_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SamplingDefaults::load(dir.path()).unwrap().guidance(), 7.5);
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, r#"{"guidance_scale": 4.0}"#).unwrap();
        assert_eq!(SamplingDefaults::load(dir.path()).unwrap().guidance(), 4.0);
        for bad in [r#"{"guidance_scale": -1}"#, r#"{"guidance": 4}"#, "{"] {
            std::fs::write(&path, bad).unwrap();
            let err = SamplingDefaults::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(FILE_NAME), "{bad}: {err}");
        }
    }
}
