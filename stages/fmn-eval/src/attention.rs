//! Cross-attention saved by `fmn-sample --save-attention` (format in
//! `fmn_sd::io::attention`; rows in manifest order): the concept's share of the attention
//! mass, and a heat map of where its tokens are attended.
use anyhow::{bail, Context, Result};
use candle_core::IndexOp;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::probes::{token_mass, AttentionRecord};
use image::{ImageBuffer, Luma, RgbImage};
use std::path::Path;

pub struct AttentionFile {
    /// The maps, sorted by their key (`step{i}/{module path}`).
    records: Vec<AttentionRecord>,
    rows: usize,
}

impl AttentionFile {
    pub fn load(path: &Path, images: usize) -> Result<AttentionFile> {
        let records: Vec<AttentionRecord> = fmn_sd::io::attention::load(path)
            .with_context(|| format!("cannot read the attention file {}", path.display()))?
            .into_values()
            .collect();
        if records.is_empty() {
            bail!("attention file {}: no tensors", path.display());
        }
        for r in &records {
            if r.probs.dim(0)? != images {
                bail!(
                    "attention file {}: tensor `{}` has shape {:?}; expected [{images}, heads, pixels, tokens] for the {images} images of the manifest",
                    path.display(),
                    r.path,
                    r.probs.dims()
                );
            }
        }
        Ok(AttentionFile {
            records,
            rows: images,
        })
    }

    /// Mean over layers, steps, heads and pixels of the attention mass on `positions`.
    pub fn share(&self, row: usize, positions: &[usize]) -> Result<f64> {
        let maps = self.token_maps(row, positions)?;
        let total: f64 = maps
            .iter()
            .map(|(_, m)| m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64)
            .sum();
        Ok(total / maps.len() as f64)
    }

    /// Per map: its record, and the attention on `positions` summed over them, averaged over
    /// heads, `[pixels]`.
    fn token_maps(
        &self,
        row: usize,
        positions: &[usize],
    ) -> Result<Vec<(&AttentionRecord, Vec<f32>)>> {
        if row >= self.rows {
            bail!("attention row {row} out of range ({} rows)", self.rows);
        }
        self.records
            .iter()
            .map(|r| {
                let probs = r.probs.i(row..row + 1)?;
                let m = token_mass(&probs, positions)
                    .with_context(|| format!("attention map `{}`", r.path))?
                    .mean(1)?
                    .squeeze(0)?;
                Ok((r, m.to_vec1::<f32>()?))
            })
            .collect()
    }

    /// The attention on `positions`, averaged over layers and steps, upsampled to
    /// `width`×`height` and scaled to 0..1 by its maximum.
    pub fn heat_map(
        &self,
        row: usize,
        positions: &[usize],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>> {
        let mut acc = vec![0f32; (width * height) as usize];
        for (r, m) in self.token_maps(row, positions)? {
            let grid: ImageBuffer<Luma<f32>, Vec<f32>> =
                ImageBuffer::from_raw(r.width as u32, r.height as u32, m)
                    .context("attention grid size")?;
            let up = image::imageops::resize(
                &grid,
                width,
                height,
                image::imageops::FilterType::Triangle,
            );
            for (a, v) in acc.iter_mut().zip(up.as_raw()) {
                *a += v;
            }
        }
        let max = acc.iter().copied().fold(0f32, f32::max);
        if max > 0.0 {
            acc.iter_mut().for_each(|v| *v /= max);
        }
        Ok(acc)
    }
}

/// Positions (in the 77-token encoding, BOS at 0) of every occurrence of each of `words` in
/// `prompt`.
pub fn token_positions(tok: &ClipTokenizer, prompt: &str, words: &[String]) -> Result<Vec<usize>> {
    let ids = tok.encode(prompt)?;
    let mut out = Vec::new();
    for word in words {
        out.extend(tok.positions_of(&ids, word)?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The image with `heat` (0..1 per pixel) laid over it in a blue → red colour ramp.
pub fn overlay(img: &RgbImage, heat: &[f32]) -> RgbImage {
    let mut out = img.clone();
    for (px, &h) in out.pixels_mut().zip(heat) {
        let colour = ramp(h);
        let alpha = 0.25 + 0.5 * h;
        for c in 0..3 {
            px[c] = (px[c] as f32 * (1.0 - alpha) + colour[c] * alpha).round() as u8;
        }
    }
    out
}

/// A "jet"-like ramp: 0 blue, 0.5 green-yellow, 1 red.
fn ramp(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * v - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * v - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * v - 1.0).abs()).clamp(0.0, 1.0);
    [r * 255.0, g * 255.0, b * 255.0]
}
