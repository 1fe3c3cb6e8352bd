//! Degradations that make rendered images look like the output of a small diffusion model
//! (blur, resampling through a low resolution, noise, blotches, colour shifts), and garbage
//! images with no figure. The judge is trained on these; tests use them to probe robustness.
use crate::scene::{Background, IMAGE_SIZE};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::Rng;
use rand_distr::StandardNormal;

/// Strength of the degradations; each is applied with its probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// Probability and side range of resampling through a lower resolution and back.
    pub resample_p: f32,
    pub resample_side: (u32, u32),
    /// Probability and maximum sigma (pixels) of a Gaussian blur.
    pub blur_p: f32,
    pub blur_sigma: f32,
    /// Probability and maximum relative strength of colour jitter (gain, offset, contrast,
    /// desaturation).
    pub jitter_p: f32,
    pub jitter: f32,
    /// Probability and maximum sigma (0..1 scale) of per-pixel Gaussian noise.
    pub noise_p: f32,
    pub noise_sigma: f32,
    /// Probability and maximum amplitude (0..1 scale) of smooth, blotchy noise.
    pub blotch_p: f32,
    pub blotch: f32,
}

impl Default for Augment {
    /// The judge's training augmentations.
    fn default() -> Self {
        Self {
            resample_p: 0.3,
            resample_side: (16, 40),
            blur_p: 0.5,
            blur_sigma: 1.4,
            jitter_p: 0.8,
            jitter: 0.08,
            noise_p: 0.5,
            noise_sigma: 0.06,
            blotch_p: 0.3,
            blotch: 0.06,
        }
    }
}

impl Augment {
    /// No degradation at all.
    pub fn none() -> Self {
        Self {
            resample_p: 0.0,
            blur_p: 0.0,
            jitter_p: 0.0,
            noise_p: 0.0,
            blotch_p: 0.0,
            ..Self::default()
        }
    }

    /// Every degradation, always applied (at a random strength up to the maximum).
    pub fn always(self) -> Self {
        Self {
            resample_p: 1.0,
            blur_p: 1.0,
            jitter_p: 1.0,
            noise_p: 1.0,
            blotch_p: 1.0,
            ..self
        }
    }
}

/// Planar f32 pixels in 0..1, `[channel][y][x]`.
struct Planes {
    w: usize,
    h: usize,
    data: Vec<f32>,
}

impl Planes {
    fn from_image(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0.0; 3 * w * h];
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                data[c * w * h + y as usize * w + x as usize] = p[c] as f32 / 255.0;
            }
        }
        Self { w, h, data }
    }

    fn to_image(&self) -> RgbImage {
        let (w, h) = (self.w, self.h);
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let i = y as usize * w + x as usize;
            Rgb(std::array::from_fn(|c| {
                (self.data[c * w * h + i].clamp(0.0, 1.0) * 255.0).round() as u8
            }))
        })
    }

    fn blur(&mut self, sigma: f32) {
        let r = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
        let (w, h) = (self.w as isize, self.h as isize);
        let mut tmp = vec![0.0; self.data.len()];
        for c in 0..3 {
            let plane = &self.data[(c * (w * h) as usize)..((c + 1) * (w * h) as usize)];
            let out = &mut tmp[(c * (w * h) as usize)..((c + 1) * (w * h) as usize)];
            for y in 0..h {
                for x in 0..w {
                    let mut a = 0.0;
                    for (k, kv) in kernel.iter().enumerate() {
                        let xx = (x + k as isize - r).clamp(0, w - 1);
                        a += kv * plane[(y * w + xx) as usize];
                    }
                    out[(y * w + x) as usize] = a;
                }
            }
        }
        for c in 0..3 {
            let plane = &tmp[(c * (w * h) as usize)..((c + 1) * (w * h) as usize)];
            let out = &mut self.data[(c * (w * h) as usize)..((c + 1) * (w * h) as usize)];
            for y in 0..h {
                for x in 0..w {
                    let mut a = 0.0;
                    for (k, kv) in kernel.iter().enumerate() {
                        let yy = (y + k as isize - r).clamp(0, h - 1);
                        a += kv * plane[(yy * w + x) as usize];
                    }
                    out[(y * w + x) as usize] = a;
                }
            }
        }
    }
}

/// A draw from N(`mean`, `sigma`²): what `rand_distr::Normal::new(mean, sigma)` draws, without
/// its error for a non-finite sigma.
fn gaussian<R: Rng + ?Sized>(rng: &mut R, mean: f32, sigma: f32) -> f32 {
    mean + sigma * rng.sample::<f32, _>(StandardNormal)
}

/// Smooth random field: `cells`×`cells` Gaussian values, bilinearly upsampled, per channel.
fn smooth_field<R: Rng + ?Sized>(rng: &mut R, cells: u32, side: u32, sigma: f32) -> RgbImage {
    let small = RgbImage::from_fn(cells, cells, |_, _| {
        Rgb(std::array::from_fn(|_| {
            (gaussian(rng, 0.5, sigma).clamp(0.0, 1.0) * 255.0) as u8
        }))
    });
    imageops::resize(&small, side, side, FilterType::Triangle)
}

/// Applies the degradations of `aug` to `img` (any size; the result has the same size).
pub fn augment<R: Rng + ?Sized>(img: &RgbImage, rng: &mut R, aug: &Augment) -> RgbImage {
    let (w, h) = img.dimensions();
    let resampled;
    let mut src = img;
    if rng.random::<f32>() < aug.resample_p {
        let (lo, hi) = aug.resample_side;
        let side = rng.random_range(lo..=hi.max(lo));
        let small = imageops::resize(img, side, side, FilterType::Triangle);
        let filter = if rng.random::<bool>() {
            FilterType::Triangle
        } else {
            FilterType::CatmullRom
        };
        resampled = imageops::resize(&small, w, h, filter);
        src = &resampled;
    }
    let mut p = Planes::from_image(src);
    if rng.random::<f32>() < aug.blur_p {
        let sigma = rng.random_range(0.3..aug.blur_sigma.max(0.31));
        p.blur(sigma);
    }
    if rng.random::<f32>() < aug.jitter_p {
        let j = aug.jitter;
        let gain: [f32; 3] = std::array::from_fn(|_| rng.random_range(1.0 - j..1.0 + j));
        let offset = rng.random_range(-0.75 * j..0.75 * j);
        let contrast = rng.random_range(1.0 - 2.0 * j..1.0 + 2.0 * j);
        let desat = rng.random_range(0.0..3.0 * j);
        let n = p.w * p.h;
        for i in 0..n {
            let grey = (p.data[i] + p.data[n + i] + p.data[2 * n + i]) / 3.0;
            for (c, g) in gain.iter().enumerate() {
                let v = &mut p.data[c * n + i];
                let mut x = *v * (1.0 - desat) + grey * desat;
                x = (x - 0.5) * contrast + 0.5;
                *v = x * g + offset;
            }
        }
    }
    if rng.random::<f32>() < aug.blotch_p {
        let amp = rng.random_range(0.0..aug.blotch.max(1e-6));
        let cells = rng.random_range(4..=12);
        let field = smooth_field(rng, cells, w.max(h), 0.25);
        let n = p.w * p.h;
        for (x, y, f) in field.enumerate_pixels() {
            if x < w && y < h {
                let i = y as usize * p.w + x as usize;
                for c in 0..3 {
                    p.data[c * n + i] += amp * 2.0 * (f[c] as f32 / 255.0 - 0.5) * 2.0;
                }
            }
        }
    }
    if rng.random::<f32>() < aug.noise_p {
        let sigma = rng.random_range(0.0..aug.noise_sigma.max(1e-6));
        let sigma = sigma.max(1e-6);
        for v in p.data.iter_mut() {
            *v += gaussian(rng, 0.0, sigma);
        }
    }
    p.to_image()
}

/// A 64×64 image with no figure: a blank background, pixel noise, a smooth random field, a
/// gradient, a solid colour, or thin random lines on a background.
pub fn garbage<R: Rng + ?Sized>(rng: &mut R) -> RgbImage {
    let n = IMAGE_SIZE;
    let random_rgb = |rng: &mut R| -> [u8; 3] { std::array::from_fn(|_| rng.random()) };
    match rng.random_range(0..6) {
        0 => {
            let bg = Background::ALL[rng.random_range(0..Background::ALL.len())].rgb();
            RgbImage::from_pixel(n, n, Rgb(bg))
        }
        1 => RgbImage::from_fn(n, n, |_, _| Rgb(random_rgb(rng))),
        2 => {
            let cells = rng.random_range(2..=10);
            let sigma = rng.random_range(0.1..0.35);
            smooth_field(rng, cells, n, sigma)
        }
        3 => {
            let (a, b) = (random_rgb(rng), random_rgb(rng));
            let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let (s, c) = angle.sin_cos();
            RgbImage::from_fn(n, n, |x, y| {
                let t =
                    (((x as f32 - 32.0) * c + (y as f32 - 32.0) * s) / 64.0 + 0.5).clamp(0.0, 1.0);
                Rgb(std::array::from_fn(|k| {
                    (a[k] as f32 * (1.0 - t) + b[k] as f32 * t) as u8
                }))
            })
        }
        4 => RgbImage::from_pixel(n, n, Rgb(random_rgb(rng))),
        _ => {
            let bg = Background::ALL[rng.random_range(0..Background::ALL.len())].rgb();
            let mut img = RgbImage::from_pixel(n, n, Rgb(bg));
            for _ in 0..rng.random_range(1..=4) {
                let colour = random_rgb(rng);
                let (x0, y0) = (
                    rng.random_range(0.0..64.0f32),
                    rng.random_range(0.0..64.0f32),
                );
                let (x1, y1) = (
                    rng.random_range(0.0..64.0f32),
                    rng.random_range(0.0..64.0f32),
                );
                for i in 0..=128 {
                    let t = i as f32 / 128.0;
                    let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
                    if (0.0..64.0).contains(&x) && (0.0..64.0).contains(&y) {
                        img.put_pixel(x as u32, y as u32, Rgb(colour));
                    }
                }
            }
            img
        }
    }
}
