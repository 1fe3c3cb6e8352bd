//! Pillow's `Image.resize` of 8-bit RGB images with its convolution filters, bit for bit
//! (`src/libImaging/Resample.c`; spec and checks: `tests/fixtures/gen/CLIP_PREPROCESS.md`):
//!
//! - per axis, the filter's support is widened by the scale when shrinking (antialiasing);
//!   the taps are computed in f64, normalised to sum 1, then rounded half away from zero to
//!   22-bit fixed point and **not** renormalised;
//! - each pass sums `u8 · tap` in integers from `2^21` (rounding), shifts right by 22 and
//!   clips to 0..255, so the pass between the two is uint8 too;
//! - a pass whose size does not change is skipped; an unchanged size is a copy;
//! - [`PassOrder`]: horizontal first (Pillow ≤ 12), or Pillow ≥ 13's vertical-first rule.
use image::RgbImage;

/// Fixed-point precision of Pillow's 8-bit passes: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// Pillow's convolution filters, numbered as `PIL.Image.Resampling` (and transformers'
/// `PILImageResampling`, the `resample` of a `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// 1: Lanczos (truncated sinc, support 3).
    Lanczos,
    /// 2: linear (support 1).
    Bilinear,
    /// 3: Keys cubic with a = −0.5 (support 2).
    Bicubic,
    /// 4: box (support 0.5).
    Box,
    /// 5: Hamming-windowed sinc (support 1).
    Hamming,
}

impl Filter {
    /// The filter with Pillow's number `n`; `None` for NEAREST (0, not a convolution) and
    /// numbers this port does not implement.
    pub fn from_pil(n: i64) -> Option<Self> {
        Some(match n {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// Pillow's name of the filter numbered `n`, if it has one.
    pub fn pil_name(n: i64) -> Option<&'static str> {
        Some(match n {
            0 => "NEAREST",
            1 => "LANCZOS",
            2 => "BILINEAR",
            3 => "BICUBIC",
            4 => "BOX",
            5 => "HAMMING",
            6 => "MKS2013",
            7 => "MKS2021",
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The filter functions of `Resample.c`, same operations in the same order.
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // `0.54f + 0.46f * cos(x)`: float literals promoted to double.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Which of the two passes runs first when both width and height change. The values differ
/// (each pass rounds to uint8), by a few levels where they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassOrder {
    /// Pillow ≤ 12.x: always the horizontal pass first. (Pillow 12.2–12.3 resize images
    /// more than 100 times taller than wide vertically first at the Python level; not
    /// followed here.)
    #[default]
    Pillow12,
    /// Pillow ≥ 13 (PR #9549): the vertical pass first iff the height shrinks, and by more
    /// than twice as many pixels as the width does.
    Pillow13,
}

impl PassOrder {
    /// The order of Pillow major version `major`.
    pub fn for_pillow(major: u32) -> Self {
        if major >= 13 {
            PassOrder::Pillow13
        } else {
            PassOrder::Pillow12
        }
    }

    fn vertical_first(self, (w, h): (u32, u32), (out_w, out_h): (u32, u32)) -> bool {
        match self {
            PassOrder::Pillow12 => false,
            PassOrder::Pillow13 => {
                let (w, h, out_w, out_h) = (
                    i64::from(w),
                    i64::from(h),
                    i64::from(out_w),
                    i64::from(out_h),
                );
                out_h < h && (h - out_h) > 2 * (w - out_w)
            }
        }
    }
}

/// One axis's taps (`precompute_coeffs` + `normalize_coeffs_8bpc`): output `i` reads inputs
/// `start[i] .. start[i] + taps(i).len()`.
struct Coeffs {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `ksize` taps per output, the first `len[i]` used.
    k: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    fn new(in_size: u32, out_size: u32, filter: Filter) -> Self {
        // `(double)(in1 - in0) / outSize` with the box (0, in) in float.
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let n_out = out_size as usize;
        let mut start = Vec::with_capacity(n_out);
        let mut len = Vec::with_capacity(n_out);
        let mut k = vec![0i32; n_out * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..n_out {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            // C `(int)` casts: truncation toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut ww = 0.0;
            for (x, wx) in w.iter_mut().enumerate().take(n) {
                *wx = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (x, wx) in w.iter().enumerate().take(n) {
                let v = if ww != 0.0 { wx / ww } else { *wx };
                let one = f64::from(1u32 << PRECISION_BITS);
                k[xx * ksize + x] = if v < 0.0 {
                    (-0.5 + v * one) as i32
                } else {
                    (0.5 + v * one) as i32
                };
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Coeffs {
            start,
            len,
            k,
            ksize,
        }
    }

    fn taps(&self, i: usize) -> &[i32] {
        &self.k[i * self.ksize..i * self.ksize + self.len[i]]
    }
}

/// `clip8(acc)`: Pillow's lookup of `acc >> 22`, i.e. floor, clamped to 0..255.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `rows` of a `w`-wide RGB buffer: `[rows.len(), out_w]`.
fn horizontal(
    src: &[u8],
    w: usize,
    rows: std::ops::Range<usize>,
    c: &Coeffs,
    out_w: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * out_w * 3);
    for y in rows {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for xx in 0..out_w {
            let (s, taps) = (c.start[xx], c.taps(xx));
            let mut acc = [HALF; 3];
            for (j, &t) in taps.iter().enumerate() {
                let p = &row[(s + j) * 3..(s + j) * 3 + 3];
                for ch in 0..3 {
                    acc[ch] += i64::from(p[ch]) * i64::from(t);
                }
            }
            out.extend(acc.map(clip8));
        }
    }
    out
}

/// Vertical pass of a `w`-wide RGB buffer whose row 0 is input row `offset`: `[out_h, w]`.
fn vertical(src: &[u8], w: usize, offset: usize, c: &Coeffs, out_h: usize) -> Vec<u8> {
    let stride = w * 3;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i64; stride];
    for yy in 0..out_h {
        let (s, taps) = (c.start[yy] - offset, c.taps(yy));
        acc.fill(HALF);
        for (j, &t) in taps.iter().enumerate() {
            let row = &src[(s + j) * stride..(s + j + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i64::from(p) * i64::from(t);
            }
        }
        for (o, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// `img.resize((out_w, out_h), resample=filter)` as Pillow does it on an 8-bit RGB image
/// (`reducing_gap=None`, the whole image as box). Sizes must be positive.
pub fn resize(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    filter: Filter,
    order: PassOrder,
) -> RgbImage {
    let (w, h) = img.dimensions();
    assert!(out_w > 0 && out_h > 0, "resize to {out_w}x{out_h}");
    if (w, h) == (out_w, out_h) {
        return img.clone();
    }
    let (wu, ow, oh) = (w as usize, out_w as usize, out_h as usize);
    let src = img.as_raw();
    let data = if out_w == w {
        vertical(src, wu, 0, &Coeffs::new(h, out_h, filter), oh)
    } else if out_h == h {
        horizontal(src, wu, 0..h as usize, &Coeffs::new(w, out_w, filter), ow)
    } else if order.vertical_first((w, h), (out_w, out_h)) {
        let tmp = vertical(src, wu, 0, &Coeffs::new(h, out_h, filter), oh);
        horizontal(&tmp, wu, 0..oh, &Coeffs::new(w, out_w, filter), ow)
    } else {
        // Only the rows the vertical pass reads (Pillow's `bounds_vert`): same values.
        let cv = Coeffs::new(h, out_h, filter);
        let first = cv.start[0];
        let last = cv.start[oh - 1] + cv.len[oh - 1];
        let tmp = horizontal(src, wu, first..last, &Coeffs::new(w, out_w, filter), ow);
        vertical(&tmp, ow, first, &cv, oh)
    };
    RgbImage::from_raw(out_w, out_h, data).unwrap_or_else(|| unreachable!("sized buffer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_taps_are_not_renormalised() {
        // 512 -> 224 bicubic: the doc's example sums of 2^22 ± a few.
        let c = Coeffs::new(512, 224, Filter::Bicubic);
        let sums: Vec<i64> = (0..224)
            .map(|i| c.taps(i).iter().map(|&t| i64::from(t)).sum())
            .collect();
        assert!(sums.iter().all(|s| (s - (1 << 22)).abs() <= 4), "{sums:?}");
        assert!(sums.iter().any(|&s| s != 1 << 22));
        // Upscaling keeps support 2: at most 5 taps.
        let c = Coeffs::new(120, 224, Filter::Bicubic);
        assert!((0..224).all(|i| c.taps(i).len() <= 5));
    }

    #[test]
    fn pil_resize_keeps_constants_and_sizes() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([7, 128, 255]));
        for f in [
            Filter::Lanczos,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Box,
            Filter::Hamming,
        ] {
            for o in [PassOrder::Pillow12, PassOrder::Pillow13] {
                for (w, h) in [(37, 11), (5, 23), (80, 51), (3, 90), (37, 23)] {
                    let r = resize(&img, w, h, f, o);
                    assert_eq!(r.dimensions(), (w, h));
                    assert!(r.pixels().all(|p| p.0 == [7, 128, 255]), "{f:?} {w}x{h}");
                }
            }
        }
        assert_eq!(PassOrder::for_pillow(12), PassOrder::Pillow12);
        assert_eq!(PassOrder::for_pillow(13), PassOrder::Pillow13);
        assert!(PassOrder::Pillow13.vertical_first((240, 560), (224, 522)));
        assert!(!PassOrder::Pillow13.vertical_first((333, 517), (224, 347)));
    }
}
