//! Turning decoded image tensors into PNG files.
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::path::Path;

/// Saves `[3, H, W]` values in `[0, 1]` as an 8-bit RGB PNG (rounded as diffusers does).
pub fn save_png(image: &Tensor, path: &Path) -> Result<()> {
    let img = fmn_sd::sample::pipeline::to_rgb_image(image)?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
