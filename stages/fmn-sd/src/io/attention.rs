//! Saved cross-attention maps (`fmn-sample --save-attention`): a safetensors file with one
//! tensor `step{i}/{module path}` of probabilities `[images, heads, height·width, tokens]` per
//! saved denoising step and `attn2` module, and in its metadata `format` = `fmn-attention/1`
//! and `grids`: a JSON object giving each tensor's `[height, width]` (the grid its pixels lie
//! on, row-major).
use crate::models::probes::AttentionRecord;
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "fmn-attention/1";

/// The tensor name of `record` at denoising step `step`.
pub fn key(step: usize, record: &AttentionRecord) -> String {
    format!("step{step}/{}", record.path)
}

/// Writes `records` (key → the record, its probabilities holding every image's rows)
/// atomically.
pub fn save(path: &Path, records: &BTreeMap<String, AttentionRecord>) -> Result<()> {
    let grids: BTreeMap<&str, [usize; 2]> = records
        .iter()
        .map(|(k, r)| (k.as_str(), [r.height, r.width]))
        .collect();
    let grids = serde_json::to_string(&grids)
        .map_err(|e| SdError::Invalid(format!("attention grids: {e}")))?;
    let tensors: HashMap<String, Tensor> = records
        .iter()
        .map(|(k, r)| (k.clone(), r.probs.clone()))
        .collect();
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("grids".to_string(), grids),
    ]);
    crate::io::weights::save_safetensors_atomic(path, &tensors, Some(metadata))
}

/// Reads a saved attention file: key → record (probabilities as f32 on the CPU), sorted by
/// key. A tensor without a grid, or whose pixels do not fill its grid, is an error naming it.
pub fn load(path: &Path) -> Result<BTreeMap<String, AttentionRecord>> {
    crate::io::weights::validate_safetensors(path)?;
    let meta = crate::io::weights::read_metadata(path)?.unwrap_or_default();
    let grids: BTreeMap<String, [usize; 2]> = match meta.get("grids") {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| SdError::config(path, format!("metadata `grids` is not valid: {e}")))?,
        None => {
            return Err(SdError::config(
                path,
                "no `grids` in the metadata: not an attention file written by `fmn-sample --save-attention`",
            ))
        }
    };
    let tensors = crate::io::weights::load_tensors(path, DType::F32, &Device::Cpu)?;
    let mut out = BTreeMap::new();
    for (key, probs) in tensors {
        let Some(&[height, width]) = grids.get(&key) else {
            return Err(SdError::config(
                path,
                format!("tensor `{key}` has no grid in `grids`"),
            ));
        };
        if probs.rank() != 4 || probs.dim(2)? != height * width {
            return Err(SdError::config(
                path,
                format!(
                    "tensor `{key}` has shape {:?}; expected [images, heads, {}, tokens] for its {height}x{width} grid",
                    probs.dims(),
                    height * width
                ),
            ));
        }
        let path_in_unet = key
            .split_once('/')
            .map_or(key.as_str(), |(_, p)| p)
            .to_string();
        out.insert(
            key,
            AttentionRecord {
                path: path_in_unet,
                height,
                width,
                probs,
            },
        );
    }
    Ok(out)
}
