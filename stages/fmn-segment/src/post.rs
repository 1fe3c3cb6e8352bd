//! From a model's map to the final 8-bit mask, and from raw model output to a map.
//!
//! Order: threshold (or keep soft values), keep the largest region, erode, dilate, feather.
use crate::preset::{Activation, OutputKind, OutputSpec, PostProcess};
use image::{GrayImage, Rgb, RgbImage};

/// One image's foreground map in 0..1 (model resolution) from its slice of the model output:
/// `channels × plane` values.
pub fn output_to_map(values: &[f32], channels: usize, spec: &OutputSpec) -> Vec<f32> {
    let plane = values.len() / channels.max(1);
    let mut map: Vec<f32> = match spec.kind {
        OutputKind::Logits => (0..plane)
            .map(|i| {
                let max = (0..channels)
                    .map(|c| values[c * plane + i])
                    .fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                let mut chosen = 0f32;
                for c in 0..channels {
                    let e = (values[c * plane + i] - max).exp();
                    total += e;
                    if spec.classes.contains(&(c as u32)) {
                        chosen += e;
                    }
                }
                chosen / total
            })
            .collect(),
        OutputKind::Probability | OutputKind::Matte => {
            let first = &values[..plane];
            match spec.activation {
                Activation::None => first.to_vec(),
                Activation::Sigmoid => first.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            }
        }
    };
    if spec.minmax {
        let (lo, hi) = map
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        let range = hi - lo;
        for v in &mut map {
            *v = if range > 0.0 { (*v - lo) / range } else { 0.0 };
        }
    }
    for v in &mut map {
        *v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    }
    map
}

/// The final mask from a `width × height` map in 0..1 (missing values are 0).
pub fn finish(map: &[f32], width: u32, height: u32, post: &PostProcess) -> GrayImage {
    let (w, h) = (width as usize, height as usize);
    let mut mask = GrayImage::new(width, height);
    for (m, &v) in mask.iter_mut().zip(map) {
        *m = match post.threshold {
            Some(t) if v >= t => 255,
            Some(_) => 0,
            None => (v * 255.0).round() as u8,
        };
    }
    if post.keep_largest {
        keep_largest(&mut mask, w, h);
    }
    if post.erode > 0 {
        filter_2d(&mut mask, w, h, post.erode as usize, u8::min, 255);
    }
    if post.dilate > 0 {
        filter_2d(&mut mask, w, h, post.dilate as usize, u8::max, 0);
    }
    if post.feather > 0.0 {
        gaussian_blur(&mut mask, w, h, post.feather);
    }
    mask
}

/// Zeroes every region of pixels ≥ 128 (8-connected) but the largest; pixels below 128 stay.
pub fn keep_largest(mask: &mut [u8], w: usize, h: usize) {
    const NONE: u32 = u32::MAX;
    let mut label = vec![NONE; w * h];
    let mut sizes: Vec<usize> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if mask[start] < 128 || label[start] != NONE {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0;
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] >= 128 && label[j] == NONE {
                        label[j] = id;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(size);
    }
    let Some(best) = sizes
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| **s)
        .map(|(i, _)| i as u32)
    else {
        return;
    };
    for (m, l) in mask.iter_mut().zip(&label) {
        if *l != NONE && *l != best {
            *m = 0;
        }
    }
}

/// Running min or max over a window of `2r + 1` along a line (van Herk / Gil-Werman),
/// `edge` standing for values beyond the ends.
fn filter_line(
    line: &mut [u8],
    r: usize,
    op: fn(u8, u8) -> u8,
    edge: u8,
    g: &mut Vec<u8>,
    hh: &mut Vec<u8>,
) {
    let n = line.len();
    let k = 2 * r + 1;
    let padded = n + 2 * r;
    let len = padded.div_ceil(k) * k;
    let get = |i: usize| {
        if i < r || i >= r + n {
            edge
        } else {
            line[i - r]
        }
    };
    g.clear();
    hh.clear();
    g.resize(len, edge);
    hh.resize(len, edge);
    for i in 0..len {
        g[i] = if i % k == 0 {
            get(i)
        } else {
            op(g[i - 1], get(i))
        };
    }
    for i in (0..len).rev() {
        hh[i] = if i % k == k - 1 || i == len - 1 {
            get(i)
        } else {
            op(hh[i + 1], get(i))
        };
    }
    // Output i covers padded indices i ..= i + 2r.
    for (i, v) in line.iter_mut().enumerate() {
        *v = op(hh[i], g[i + 2 * r]);
    }
}

/// Square-window min (erode) or max (dilate) filter of radius `r`.
fn filter_2d(mask: &mut [u8], w: usize, h: usize, r: usize, op: fn(u8, u8) -> u8, edge: u8) {
    let (mut g, mut hh) = (Vec::new(), Vec::new());
    for row in mask.chunks_mut(w) {
        filter_line(row, r, op, edge, &mut g, &mut hh);
    }
    let mut col = vec![0u8; h];
    for x in 0..w {
        for y in 0..h {
            col[y] = mask[y * w + x];
        }
        filter_line(&mut col, r, op, edge, &mut g, &mut hh);
        for y in 0..h {
            mask[y * w + x] = col[y];
        }
    }
}

/// Separable Gaussian blur (edges clamped).
fn gaussian_blur(mask: &mut [u8], w: usize, h: usize, sigma: f32) {
    let r = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let src: Vec<f32> = mask.iter().map(|&v| v as f32).collect();
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, kv) in kernel.iter().enumerate() {
                let xx = (x as isize + k as isize - r).clamp(0, w as isize - 1) as usize;
                acc += kv * src[y * w + xx];
            }
            tmp[y * w + x] = acc;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, kv) in kernel.iter().enumerate() {
                let yy = (y as isize + k as isize - r).clamp(0, h as isize - 1) as usize;
                acc += kv * tmp[yy * w + x];
            }
            mask[y * w + x] = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// The fraction of the image that is concept (mean mask value / 255).
pub fn coverage(mask: &GrayImage) -> f64 {
    let n = mask.as_raw().len().max(1) as f64;
    mask.as_raw().iter().map(|&v| v as f64).sum::<f64>() / 255.0 / n
}

/// The image with the mask tinted in (magenta at half strength) for a person to check.
pub fn overlay(image: &RgbImage, mask: &GrayImage) -> RgbImage {
    const TINT: [f32; 3] = [255.0, 0.0, 200.0];
    let mut out = image.clone();
    for (p, m) in out.pixels_mut().zip(mask.pixels()) {
        let a = m[0] as f32 / 255.0 * 0.55;
        *p = Rgb(std::array::from_fn(|k| {
            (p[k] as f32 * (1.0 - a) + TINT[k] * a).round() as u8
        }));
    }
    out
}

/// Intersection over union of two masks (pixels ≥ 128 are foreground); 1 when both are
/// empty.
pub fn iou(a: &GrayImage, b: &GrayImage) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let (x, y) = (*x >= 128, *y >= 128);
        inter += (x && y) as u64;
        union += (x || y) as u64;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post() -> PostProcess {
        PostProcess::default()
    }

    #[test]
    fn erode_dilate_square() {
        let (w, h) = (9, 9);
        let mut m = vec![0u8; w * h];
        m[4 * w + 4] = 255;
        filter_2d(&mut m, w, h, 2, u8::max, 0);
        assert_eq!(m.iter().filter(|v| **v == 255).count(), 25);
        assert_eq!(m[2 * w + 2], 255);
        assert_eq!(m[w + 1], 0);
        filter_2d(&mut m, w, h, 1, u8::min, 255);
        assert_eq!(m.iter().filter(|v| **v == 255).count(), 9);
        // Erosion treats the outside as foreground: a full mask stays full.
        let mut full = vec![255u8; 12];
        filter_2d(&mut full, 4, 3, 3, u8::min, 255);
        assert!(full.iter().all(|v| *v == 255));
    }

    #[test]
    fn largest_component_only() {
        let (w, h) = (6, 3);
        #[rustfmt::skip]
        let mut m = vec![
            255, 255, 0, 0, 0, 255,
            255, 255, 0, 0, 0, 0,
            0,   0,   0, 0, 100, 0,
        ];
        keep_largest(&mut m, w, h);
        assert_eq!(m[5], 0);
        assert_eq!(m[0], 255);
        assert_eq!(m[16], 100);
    }

    #[test]
    fn logits_pick_classes() {
        let spec = OutputSpec {
            name: None,
            kind: OutputKind::Logits,
            activation: Activation::None,
            minmax: false,
            classes: vec![1, 2],
        };
        // 3 classes, 2 pixels: pixel 0 is class 0, pixel 1 class 2.
        let values = [5.0, -5.0, -5.0, -5.0, -5.0, 5.0];
        let map = output_to_map(&values, 3, &spec);
        assert!(map[0] < 0.01 && map[1] > 0.99, "{map:?}");
    }

    #[test]
    fn threshold_soft_feather() {
        let map = [0.2, 0.6, 0.5, 1.0];
        assert_eq!(
            finish(&map, 2, 2, &post()).into_raw(),
            vec![0, 255, 255, 255]
        );
        let soft = PostProcess {
            threshold: None,
            ..post()
        };
        assert_eq!(
            finish(&map, 2, 2, &soft).into_raw(),
            vec![51, 153, 128, 255]
        );
        let mut m = vec![0u8; 25];
        m[12] = 255;
        gaussian_blur(&mut m, 5, 5, 1.0);
        assert!(m[12] < 255 && m[11] > 0 && m[0] < m[11]);
    }

    #[test]
    fn coverage_and_iou() {
        let a = GrayImage::from_raw(2, 1, vec![255, 0]).unwrap();
        let b = GrayImage::from_raw(2, 1, vec![255, 255]).unwrap();
        assert_eq!(coverage(&a), 0.5);
        assert_eq!(iou(&a, &b), 0.5);
    }
}
