//! The evaluation's pre-flight memory check: its peak is one chunk of image pairs decoded at
//! once, read off the image headers (no pixel is decoded) before the judge is loaded.
use crate::samples::Pair;
use anyhow::Result;

/// Bytes held per pixel of a chunk: each image as RGB8 (3), and while a pair is compared,
/// the SSIM's two grey f64 planes (2 × 8, for the largest pair only).
const RGB_BYTES: u64 = 3;
const SSIM_BYTES: u64 = 16;

/// Refuses the evaluation when a chunk of `chunk` pairs needs more than `limit` or the
/// available memory. Unreadable headers are left to the decoder, which names the file.
pub fn check(pairs: &[Pair], chunk: usize, limit: Option<u64>) -> Result<()> {
    let pixels = |p: &std::path::Path| {
        image::image_dimensions(p).map_or(0, |(w, h)| u64::from(w) * u64::from(h))
    };
    let mut worst = (0u64, 0usize);
    for (i, c) in pairs.chunks(chunk.max(1)).enumerate() {
        let sizes: Vec<(u64, u64)> = c
            .iter()
            .map(|p| (pixels(&p.before_file), pixels(&p.after_file)))
            .collect();
        let images: u64 = sizes.iter().map(|(b, a)| b.saturating_add(*a)).sum();
        let largest = sizes
            .iter()
            .map(|(b, a)| b.max(a))
            .max()
            .copied()
            .unwrap_or(0);
        let bytes = images
            .saturating_mul(RGB_BYTES)
            .saturating_add(largest.saturating_mul(SSIM_BYTES));
        if bytes > worst.0 {
            worst = (bytes, i);
        }
    }
    let (bytes, i) = worst;
    let described = fmn_core::memory::human(bytes as f64);
    let first = pairs
        .get(i * chunk)
        .map(|p| p.before_file.display().to_string());
    fmn_core::memory::check(
        bytes,
        &format!("{described} (decoded images)"),
        &format!(
            "judging the image pairs from {} on, {chunk} at a time,",
            first.unwrap_or_default()
        ),
        limit,
    )?;
    Ok(())
}
