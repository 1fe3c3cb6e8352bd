//! Reading the `config.json` files of a diffusers folder.
use crate::{Result, SdError};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `path` as JSON into `T`; a missing file or a field of the wrong type is an error
/// naming the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| SdError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SdError::config(path, format!("invalid config: {e}")))
}
