//! Finding and opening the safetensors weights of one diffusers component folder.
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Precision suffixes diffusers uses for weight variants (`diffusion_pytorch_model.fp16.safetensors`).
const VARIANTS: [&str; 2] = ["fp16", "bf16"];

/// The weights file of a component folder: `{stem}.safetensors`, else a `{stem}.{variant}.safetensors`.
/// `stem` is `diffusion_pytorch_model` for UNet/VAE and `model` for transformers' text encoders.
pub fn find_weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let plain = dir.join(format!("{stem}.safetensors"));
    if plain.is_file() {
        return Ok(plain);
    }
    for variant in VARIANTS {
        let file = dir.join(format!("{stem}.{variant}.safetensors"));
        if file.is_file() {
            return Ok(file);
        }
    }
    if !dir.is_dir() {
        return Err(SdError::config(dir, "component folder is missing"));
    }
    let pickle = dir.join(format!("{stem}.bin"));
    let hint = if pickle.is_file() {
        format!(
            " (found {}: pickle weights are never loaded; convert them to safetensors first)",
            pickle.display()
        )
    } else {
        String::new()
    };
    Err(SdError::config(
        dir,
        format!("no weights file: expected {stem}.safetensors or {stem}.fp16.safetensors{hint}"),
    ))
}

/// Checks that `file` is a complete safetensors file, so that truncation is reported by name
/// rather than as a failure deep inside model construction.
pub fn validate_safetensors(file: &Path) -> Result<()> {
    let f = std::fs::File::open(file).map_err(|e| SdError::io(file, e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| SdError::io(file, e))?;
    safetensors::SafeTensors::deserialize(&mmap).map_err(|e| SdError::Safetensors {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(())
}

/// The `__metadata__` strings of a safetensors file, read from its memory-mapped header (the
/// tensor data is not read).
pub fn read_metadata(file: &Path) -> Result<Option<HashMap<String, String>>> {
    let f = std::fs::File::open(file).map_err(|e| SdError::io(file, e))?;
    // SAFETY: the mapping is read-only and dropped before this function returns.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| SdError::io(file, e))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| SdError::Safetensors {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(header.metadata().clone())
}

/// A memory-mapped [`VarBuilder`] over `file` that hands out tensors converted to `dtype`.
pub fn mmap_var_builder(file: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    validate_safetensors(file)?;
    // SAFETY: weights files are not modified while a model is loaded from them.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], dtype, device) }.map_err(|source| {
        SdError::Weights {
            path: file.to_path_buf(),
            source,
        }
    })
}

/// Loads every tensor of `file` into memory as `dtype` (used when some of them become trainable).
pub fn load_tensors(file: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    load_tensors_where(file, dtype, device, |_| true)
}

/// As [`load_tensors`], only the tensors whose name `keep` selects; the others are not read.
pub fn load_tensors_where(
    file: &Path,
    dtype: DType,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>> {
    validate_safetensors(file)?;
    let in_file = |source| SdError::Weights {
        path: file.to_path_buf(),
        source,
    };
    // SAFETY: weights files are not modified while a model is loaded from them.
    let tensors =
        unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }.map_err(in_file)?;
    tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, _)| {
            let t = tensors.load(&name, device).map_err(in_file)?;
            Ok((name, t.to_dtype(dtype)?))
        })
        .collect()
}

/// Attaches the weights file to an error raised while building a model from it.
pub fn in_file<T>(file: &Path, res: candle_core::Result<T>) -> Result<T> {
    res.map_err(|source| SdError::Weights {
        path: file.to_path_buf(),
        source,
    })
}

/// Writes `tensors` (moved to the CPU) with optional string `metadata` as a safetensors file,
/// atomically: a temporary sibling renamed over `path`.
pub fn save_safetensors_atomic(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let cpu = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    let bytes = safetensors::serialize(&cpu, metadata).map_err(|e| SdError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    fmn_core::write_atomic(path, |f| std::io::Write::write_all(f, &bytes))
        .map_err(|e| SdError::io(path, e))
}

/// Builds a model from the weights file `{stem}[.fp16|.bf16].safetensors` of the component
/// folder `dir` (converted to `dtype`), naming that file in any error.
pub fn build_from_dir<T>(
    dir: &Path,
    stem: &str,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let file = find_weights_file(dir, stem)?;
    let vb = mmap_var_builder(&file, dtype, device)?;
    in_file(&file, build(vb))
}
