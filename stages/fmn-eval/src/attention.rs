//! Cross-attention saved by `fmn-sample --save-attention`: tensors `step{i}/{module path}` of
//! shape [images, heads, pixels, 77] (rows in manifest order). The concept's share of the
//! attention mass, and a heat map of where its tokens are attended.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor, D};
use fmn_sd::io::tokenizer::ClipTokenizer;
use image::{ImageBuffer, Luma, RgbImage};
use std::path::Path;

pub struct AttentionFile {
    /// (name, [images, heads, pixels, tokens]) sorted by name.
    tensors: Vec<(String, Tensor)>,
    rows: usize,
}

impl AttentionFile {
    pub fn load(path: &Path, images: usize) -> Result<AttentionFile> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read the attention file {}", path.display()))?;
        let mut tensors: Vec<(String, Tensor)> = map.into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        if tensors.is_empty() {
            bail!("attention file {}: no tensors", path.display());
        }
        for (name, t) in &tensors {
            if t.rank() != 4 || t.dim(0)? != images {
                bail!(
                    "attention file {}: tensor `{name}` has shape {:?}; expected [{images}, heads, pixels, tokens] for the {images} images of the manifest",
                    path.display(),
                    t.dims()
                );
            }
        }
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(AttentionFile {
            tensors,
            rows: images,
        })
    }

    /// Mean over layers, steps, heads and pixels of the attention mass on `positions`.
    pub fn share(&self, row: usize, positions: &[usize]) -> Result<f64> {
        let maps = self.token_maps(row, positions)?;
        let total: f64 = maps
            .iter()
            .map(|m| m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64)
            .sum();
        Ok(total / maps.len() as f64)
    }

    /// Per tensor: the attention on `positions` summed over them, averaged over heads,
    /// [pixels].
    fn token_maps(&self, row: usize, positions: &[usize]) -> Result<Vec<Vec<f32>>> {
        if row >= self.rows {
            bail!("attention row {row} out of range ({} rows)", self.rows);
        }
        let idx = Tensor::new(
            positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        self.tensors
            .iter()
            .map(|(name, t)| {
                let tokens = t.dim(3)?;
                if let Some(&p) = positions.iter().find(|&&p| p >= tokens) {
                    bail!("token position {p} beyond the {tokens} tokens of `{name}`");
                }
                let m = t.i(row)?.index_select(&idx, 2)?.sum(D::Minus1)?.mean(0)?;
                Ok(m.to_vec1::<f32>()?)
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
        let maps = self.token_maps(row, positions)?;
        for m in &maps {
            let px = m.len();
            // A latent grid of the image's aspect ratio: h × w = pixels.
            let h = ((px as f64) * height as f64 / width as f64).sqrt().round() as usize;
            let h = h.max(1);
            let w = px / h;
            if h * w != px {
                bail!("cannot lay {px} attention pixels on a grid of the image's aspect ratio");
            }
            let grid: ImageBuffer<Luma<f32>, Vec<f32>> =
                ImageBuffer::from_raw(w as u32, h as u32, m.clone())
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
        let w = tok.tokenize(word)?;
        if w.is_empty() {
            continue;
        }
        for start in 0..ids.len().saturating_sub(w.len() - 1) {
            if ids[start..start + w.len()] == w[..] {
                out.extend(start..start + w.len());
            }
        }
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
