//! Turning decoded image tensors into PNG files.
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// Saves `[3, H, W]` values in `[0, 1]` as an 8-bit RGB PNG (rounded as diffusers does).
pub fn save_png(image: &Tensor, path: &Path) -> Result<()> {
    let (c, h, w) = image.dims3()?;
    anyhow::ensure!(c == 3, "expected an RGB image tensor, got {c} channels");
    let pixels = (image.permute((1, 2, 0))? * 255.0)?
        .round()?
        .clamp(0f32, 255f32)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let img = image::RgbImage::from_raw(w as u32, h as u32, pixels).context("image buffer size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
