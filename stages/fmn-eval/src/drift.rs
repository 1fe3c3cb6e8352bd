//! How much an image changed: mean absolute pixel difference and SSIM.
use anyhow::{bail, Result};
use image::RgbImage;

/// SSIM window side (uniform window, as scikit-image's default `win_size=7`).
pub const WINDOW: usize = 7;

/// Mean |a − b| over all pixels and channels, on values scaled to 0..1.
pub fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| x.abs_diff(y) as u64)
        .sum();
    Ok(total as f64 / 255.0 / a.as_raw().len() as f64)
}

fn same_size(a: &RgbImage, b: &RgbImage) -> Result<()> {
    if a.dimensions() != b.dimensions() {
        bail!(
            "images of different sizes: {:?} vs {:?}",
            a.dimensions(),
            b.dimensions()
        );
    }
    Ok(())
}

/// Luma (ITU-R BT.601) on 0..255.
pub fn luma(img: &RgbImage) -> Vec<f64> {
    img.pixels()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect()
}

/// SSIM of two windows' statistics (data range 255, K1 = 0.01, K2 = 0.03).
pub fn ssim_stats(mx: f64, my: f64, vx: f64, vy: f64, cxy: f64) -> f64 {
    let c1 = (0.01f64 * 255.0).powi(2);
    let c2 = (0.03f64 * 255.0).powi(2);
    ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
}

/// Mean SSIM of the luma of `a` and `b` over every 7×7 window (population statistics; the
/// whole image is one window when it is smaller than 7×7).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (x, y) = (luma(a), luma(b));
    let (ww, wh) = (WINDOW.min(w), WINDOW.min(h));
    let n = (ww * wh) as f64;
    let mut total = 0.0;
    let mut windows = 0usize;
    for top in 0..=(h - wh) {
        for left in 0..=(w - ww) {
            let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for r in top..top + wh {
                for c in left..left + ww {
                    let (p, q) = (x[r * w + c], y[r * w + c]);
                    sx += p;
                    sy += q;
                    sxx += p * p;
                    syy += q * q;
                    sxy += p * q;
                }
            }
            let (mx, my) = (sx / n, sy / n);
            total += ssim_stats(
                mx,
                my,
                sxx / n - mx * mx,
                syy / n - my * my,
                sxy / n - mx * my,
            );
            windows += 1;
        }
    }
    Ok(total / windows as f64)
}
