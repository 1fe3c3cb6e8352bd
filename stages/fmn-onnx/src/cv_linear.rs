//! `filter: opencv_linear`: OpenCV's `cv::resize(src, dsize, INTER_LINEAR)` on 8-bit images,
//! integer for integer, because detectors such as NudeNet were trained on (and are scored
//! with) images OpenCV resized, and the `image` crate's filters widen when shrinking while
//! OpenCV's bilinear samples only the 2 × 2 nearest source pixels.
//!
//! The arithmetic is that of OpenCV's generic `resizeGeneric_` with `HResizeLinear` and
//! `VResizeLinear<uchar, int, short, FixedPtCast<int, uchar, 22>>` (written down, and checked
//! against OpenCV 4.14 and 5.1 on every square size 1..699, in
//! `tests/fixtures/gen/NUDENET_3.4.2.md`):
//!
//! - per axis, `scale = 1 / (dst / src)` in f64; destination index `d` samples at
//!   `f = f32((d + 0.5) · scale − 0.5)`, taps `floor(f)` and `floor(f) + 1`, weights
//!   `round_half_even((1 − frac) · 2048)` and `round_half_even(frac · 2048)` (11-bit, f32
//!   products);
//! - horizontally, a tap left of the image or at/after its last column takes weights
//!   `(2048, 0)` on the nearest column; vertically the weights are kept and only the rows are
//!   clamped (this differs from the horizontal rule by one in places when upscaling);
//! - `h = src[s0]·a0 + src[s1]·a1` per channel (no rounding), then
//!   `out = (((b0·(h0 >> 4)) >> 16) + ((b1·(h1 >> 4)) >> 16) + 2) >> 2`, saturated to 0..255.
//!
//! OpenCV switches an exact 2× downscale to `INTER_AREA`, whose 2 × 2 mean
//! `(a + b + c + d + 2) >> 2` is what the formula above gives there too (weights 1024, 1024).
use image::RgbImage;

/// `INTER_RESIZE_COEF_SCALE`: the weights are 11-bit fixed point.
const COEF_SCALE: f32 = 2048.0;

/// One axis's taps and weights, per destination index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taps {
    pub first: Vec<usize>,
    pub second: Vec<usize>,
    pub w0: Vec<i32>,
    pub w1: Vec<i32>,
}

/// The taps of one axis from `src` to `dst` pixels. `reset_borders`: the horizontal rule
/// (a tap outside the image gets weights `(2048, 0)` on the border pixel); without it (the
/// vertical rule) only the taps are clamped.
pub(crate) fn taps(src: u32, dst: u32, reset_borders: bool) -> Taps {
    let n = dst as usize;
    let last = i64::from(src.max(1)) - 1;
    // As OpenCV: inv_scale = (double)dsize / ssize; scale = 1. / inv_scale.
    let scale = 1.0 / (f64::from(dst) / f64::from(src));
    let mut t = Taps {
        first: Vec::with_capacity(n),
        second: Vec::with_capacity(n),
        w0: Vec::with_capacity(n),
        w1: Vec::with_capacity(n),
    };
    for d in 0..dst {
        let pos = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
        let mut s = pos.floor() as i64;
        let mut frac = pos - s as f32;
        if reset_borders {
            if s < 0 {
                (frac, s) = (0.0, 0);
            }
            if s >= last {
                (frac, s) = (0.0, last);
            }
        }
        // saturate_cast<short>(float) rounds half to even (cvRound).
        t.w0.push(((1.0 - frac) * COEF_SCALE).round_ties_even() as i32);
        t.w1.push((frac * COEF_SCALE).round_ties_even() as i32);
        t.first.push(s.clamp(0, last) as usize);
        t.second.push((s + 1).clamp(0, last) as usize);
    }
    t
}

/// One source row resized horizontally: `dw × 3` fixed-point sums (weights sum to 2048).
fn horizontal(row: &[u8], x: &Taps) -> Vec<i32> {
    let mut out = Vec::with_capacity(x.first.len() * 3);
    for i in 0..x.first.len() {
        let (s0, s1) = (x.first[i] * 3, x.second[i] * 3);
        for c in 0..3 {
            out.push(i32::from(row[s0 + c]) * x.w0[i] + i32::from(row[s1 + c]) * x.w1[i]);
        }
    }
    out
}

/// One output value from two horizontal sums and the vertical weights, as OpenCV's
/// `VResizeLinear` for `uchar` rounds it.
#[inline]
fn vertical(h0: i32, h1: i32, b0: i32, b1: i32) -> u8 {
    let v = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2;
    v.clamp(0, 255) as u8
}

/// `cv::resize(img, (w, h), INTER_LINEAR)` of an 8-bit 3-channel image.
pub fn resize_linear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    resize_rows(img.width(), img.height(), w, h, |r| {
        raw[r * stride..(r + 1) * stride].to_vec()
    })
}

/// [`resize_linear`] of `img` padded at the bottom and right with `pad` to `side × side`
/// (`copyMakeBorder` then `resize`), without making the padded image: each source row is
/// padded when it is read.
pub fn resize_linear_padded(img: &RgbImage, side: u32, pad: [u8; 3], w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let stride = iw as usize * 3;
    let raw = img.as_raw();
    let pad_row: Vec<u8> = pad
        .iter()
        .copied()
        .cycle()
        .take(side as usize * 3)
        .collect();
    resize_rows(side, side, w, h, |r| {
        let mut row = pad_row.clone();
        if r < ih as usize {
            row[..stride].copy_from_slice(&raw[r * stride..(r + 1) * stride]);
        }
        row
    })
}

/// The resize of a `sw × sh` image whose rows (`sw × 3` bytes) `row` gives.
fn resize_rows(sw: u32, sh: u32, w: u32, h: u32, row: impl Fn(usize) -> Vec<u8>) -> RgbImage {
    if sw == 0 || sh == 0 {
        return RgbImage::new(w, h);
    }
    let x = taps(sw, w, true);
    let y = taps(sh, h, false);
    // Each source row is resized horizontally once, when an output row first needs it.
    let mut rows: Vec<Option<Vec<i32>>> = vec![None; sh as usize];
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    let mut freed = 0;
    for d in 0..h as usize {
        let (r0, r1) = (y.first[d], y.second[d]);
        for r in [r0, r1] {
            if rows[r].is_none() {
                rows[r] = Some(horizontal(&row(r), &x));
            }
        }
        let (Some(h0), Some(h1)) = (&rows[r0], &rows[r1]) else {
            continue;
        };
        let (b0, b1) = (y.w0[d], y.w1[d]);
        out.extend(h0.iter().zip(h1).map(|(&a, &b)| vertical(a, b, b0, b1)));
        // Rows above the current pair are never read again.
        for r in rows.iter_mut().take(r0).skip(freed) {
            *r = None;
        }
        freed = freed.max(r0);
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(w: u32, h: u32, v: &[u8]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let p = v[(y * w + x) as usize];
            image::Rgb([p, p, p])
        })
    }

    fn red(img: &RgbImage) -> Vec<u8> {
        img.pixels().map(|p| p[0]).collect()
    }

    /// 2 → 4 columns: positions −0.25, 0.25, 0.75, 1.25; the first is reset to column 0 with
    /// weights (2048, 0), the last (≥ the last column) too.
    #[test]
    fn horizontal_taps_reset_at_the_borders() {
        let t = taps(2, 4, true);
        assert_eq!(t.first, vec![0, 0, 0, 1]);
        assert_eq!(t.second, vec![1, 1, 1, 1]);
        assert_eq!(t.w0, vec![2048, 1536, 512, 2048]);
        assert_eq!(t.w1, vec![0, 512, 1536, 0]);
    }

    /// The same axis vertically: floor(−0.25) = −1 with fraction 0.75 keeps its weights,
    /// both taps clamped to row 0; 1.25 reads rows 1 and 1 (clamped) with (1536, 512).
    #[test]
    fn vertical_taps_keep_their_weights() {
        let t = taps(2, 4, false);
        assert_eq!(t.first, vec![0, 0, 0, 1]);
        assert_eq!(t.second, vec![0, 1, 1, 1]);
        assert_eq!(t.w0, vec![512, 1536, 512, 1536]);
        assert_eq!(t.w1, vec![1536, 512, 1536, 512]);
    }

    /// 1 × 2 → 1 × 4 (upscaling rows) by hand: rows 10 and 20.
    /// Horizontal sums: 10·2048 = 20480, 20·2048 = 40960; `>> 4`: 1280, 2560.
    /// out0 = ((512·1280 >> 16) + (1536·1280 >> 16) + 2) >> 2 = (10 + 30 + 2) >> 2 = 10
    /// out1 = ((1536·1280 >> 16) + (512·2560 >> 16) + 2) >> 2 = (30 + 20 + 2) >> 2 = 13
    /// out2 = ((512·1280 >> 16) + (1536·2560 >> 16) + 2) >> 2 = (10 + 60 + 2) >> 2 = 18
    /// out3 = ((1536·2560 >> 16) + (512·2560 >> 16) + 2) >> 2 = (60 + 20 + 2) >> 2 = 20
    #[test]
    fn a_column_upscaled_by_hand() {
        let out = resize_linear(&gray(1, 2, &[10, 20]), 1, 4);
        assert_eq!(red(&out), vec![10, 13, 18, 20]);
    }

    /// The per-term shifts truncate: 1 × 2 of 255 and 0 → 1 × 4.
    /// `h >> 4` of 255·2048 is 32640; 512·32640 >> 16 = 255, 1536·32640 >> 16 = 765.
    /// out = [(255 + 765 + 2) >> 2, (765 + 0 + 2) >> 2, (255 + 2) >> 2, (0 + 2) >> 2]
    ///     = [255, 191, 64, 0]
    #[test]
    fn the_vertical_rounding_is_opencvs() {
        let out = resize_linear(&gray(1, 2, &[255, 0]), 1, 4);
        assert_eq!(red(&out), vec![255, 191, 64, 0]);
    }

    /// 3 → 2 columns: scale 1.5, positions 0.25 and 1.75: weights (1536, 512) on columns 0, 1
    /// and (512, 1536) on columns 1, 2. Row [0, 100, 200]:
    /// h = [100·512, 100·512 + 200·1536] = [51200, 358400]; one row, so b = (2048, 0) — the
    /// vertical position of a 1 → 1 axis is 0 — and out = ((2048·(h >> 4)) >> 16 + 2) >> 2:
    /// 51200 >> 4 = 3200 → 2048·3200 >> 16 = 100 → (100 + 2) >> 2 = 25;
    /// 358400 >> 4 = 22400 → 700 → 175.
    #[test]
    fn a_row_downscaled_by_hand() {
        let out = resize_linear(&gray(3, 1, &[0, 100, 200]), 2, 1);
        assert_eq!(red(&out), vec![25, 175]);
    }

    /// An exact 2× downscale is the 2 × 2 mean rounded half up, `(a + b + c + d + 2) >> 2`
    /// (what OpenCV's INTER_AREA fast path, which it switches to there, computes).
    #[test]
    fn an_exact_half_is_the_rounded_2x2_mean() {
        let w = 8u32;
        let v: Vec<u8> = (0..w * w)
            .map(|i| ((i * 37 + i * i * 11) % 256) as u8)
            .collect();
        let out = resize_linear(&gray(w, w, &v), w / 2, w / 2);
        for y in 0..w / 2 {
            for x in 0..w / 2 {
                let at = |dx: u32, dy: u32| u32::from(v[((2 * y + dy) * w + 2 * x + dx) as usize]);
                let mean = (at(0, 0) + at(1, 0) + at(0, 1) + at(1, 1) + 2) >> 2;
                assert_eq!(u32::from(out.get_pixel(x, y)[0]), mean, "({x}, {y})");
            }
        }
    }

    /// Channels are resized independently, in place; the same size is a copy.
    #[test]
    fn channels_stay_apart_and_equal_sizes_copy() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 50) as u8, (y * 90) as u8, 7]));
        let out = resize_linear(&img, 3, 2);
        assert!(out.pixels().all(|p| p[2] == 7));
        assert_eq!(resize_linear(&img, 5, 3), img);
    }

    /// Padding row by row is padding first.
    #[test]
    fn padded_rows_equal_a_padded_image() {
        let img = RgbImage::from_fn(7, 4, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 60) as u8, 200])
        });
        let mut square = RgbImage::from_pixel(7, 7, image::Rgb([1, 2, 3]));
        image::imageops::replace(&mut square, &img, 0, 0);
        for (w, h) in [(5, 5), (16, 9), (7, 7)] {
            assert_eq!(
                resize_linear_padded(&img, 7, [1, 2, 3], w, h),
                resize_linear(&square, w, h),
                "{w}x{h}"
            );
        }
    }
}
