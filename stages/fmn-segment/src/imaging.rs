//! Reading images of any kind, and bringing a model's map back to the image's own size (the
//! model input is made by [`fmn_onnx::prepare`]).
use crate::error::{Result, SegmentError};
pub use fmn_onnx::{prepare, Geometry, Placement};
use image::{DynamicImage, ImageReader, RgbImage};
use std::path::Path;

/// Largest side accepted (pixels).
pub const MAX_SIDE: u32 = 20_000;
/// Largest decoded size accepted (bytes).
pub const MAX_DECODED_BYTES: u64 = 2 << 30;

/// Reads an image file of any supported kind (8/16-bit, gray, gray+alpha, RGB, RGBA) as 8-bit
/// RGB; transparent pixels are laid over white.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let err = |message: String| SegmentError::Image {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|e| err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(err("not a PNG or JPEG image".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(err("image has no pixels".into()));
    }
    Ok(to_rgb(img))
}

/// 8-bit RGB from any image, alpha laid over white.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for k in 0..3 {
            o[k] = ((p[k] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Bilinear resize (pixel centres aligned, as PyTorch's `align_corners=False`) of the region
/// `(x0, y0, rw, rh)` of a `sw`-wide map to `dw × dh`.
#[allow(clippy::too_many_arguments)]
fn resize_region(
    src: &[f32],
    sw: usize,
    (x0, y0, rw, rh): (usize, usize, usize, usize),
    dw: usize,
    dh: usize,
) -> Vec<f32> {
    let taps = |d: usize, r: usize| -> Vec<(usize, usize, f32)> {
        (0..d)
            .map(|i| {
                let s = ((i as f64 + 0.5) * r as f64 / d as f64 - 0.5).clamp(0.0, (r - 1) as f64);
                let a = s.floor() as usize;
                let b = (a + 1).min(r - 1);
                (a, b, (s - a as f64) as f32)
            })
            .collect()
    };
    let xs = taps(dw, rw);
    let ys = taps(dh, rh);
    let mut out = vec![0f32; dw * dh];
    let mut row = vec![0f32; rw];
    for (j, &(a, b, t)) in ys.iter().enumerate() {
        let ra = &src[(y0 + a) * sw + x0..(y0 + a) * sw + x0 + rw];
        let rb = &src[(y0 + b) * sw + x0..(y0 + b) * sw + x0 + rw];
        for ((r, va), vb) in row.iter_mut().zip(ra).zip(rb) {
            *r = va + (vb - va) * t;
        }
        let o = &mut out[j * dw..(j + 1) * dw];
        for (v, &(a, b, t)) in o.iter_mut().zip(&xs) {
            *v = row[a] + (row[b] - row[a]) * t;
        }
    }
    out
}

/// A `sw × sh` map resized (bilinear) to `dw × dh`.
pub fn resize_map(map: &[f32], sw: u32, sh: u32, dw: u32, dh: u32) -> Vec<f32> {
    if (sw, sh) == (dw, dh) {
        return map.to_vec();
    }
    resize_region(
        map,
        sw as usize,
        (0, 0, sw as usize, sh as usize),
        dw as usize,
        dh as usize,
    )
}

/// The model's `mw × mh` map (the model's input size) brought back to the image: `width × height` values.
pub fn map_back(map: &[f32], mw: u32, mh: u32, geometry: &Geometry) -> Vec<f32> {
    let (mw, mh) = (mw as usize, mh as usize);
    let (w, h) = (geometry.width as usize, geometry.height as usize);
    match geometry.placement {
        Placement::Stretch => resize_region(map, mw, (0, 0, mw, mh), w, h),
        Placement::Letterbox { x, y, w: rw, h: rh } => resize_region(
            map,
            mw,
            (x as usize, y as usize, rw as usize, rh as usize),
            w,
            h,
        ),
        Placement::Crop { x, y, w: cw, h: ch } => {
            // The rectangle may reach past the image's right or bottom edge (`pad_square`):
            // only its part inside the image is copied.
            let (x, y) = (x as usize, y as usize);
            let inner = resize_region(map, mw, (0, 0, mw, mh), cw as usize, ch as usize);
            let cols = (cw as usize).min(w.saturating_sub(x));
            let mut out = vec![0f32; w * h];
            for (j, row) in inner
                .chunks(cw as usize)
                .take(h.saturating_sub(y))
                .enumerate()
            {
                let start = (y + j) * w + x;
                out[start..start + cols].copy_from_slice(&row[..cols]);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fmn_onnx::{InputSpec, ResizeMode};

    /// An input of `size` fed by `resize`.
    fn spec(resize: ResizeMode, size: [u32; 2]) -> InputSpec {
        let mut spec = InputSpec::new(size);
        spec.resize = resize;
        spec
    }

    #[test]
    fn letterbox_and_crop_geometry() {
        let img = RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0]));
        let (data, g) = prepare(&img, &spec(ResizeMode::Letterbox, [64, 64]));
        assert_eq!(
            g.placement,
            Placement::Letterbox {
                x: 0,
                y: 16,
                w: 64,
                h: 32
            }
        );
        assert_eq!(data[0], 0.0); // padding
        assert_eq!(data[20 * 64], 1.0); // red inside
        let (_, g) = prepare(&img, &spec(ResizeMode::Crop, [64, 64]));
        assert_eq!(
            g.placement,
            Placement::Crop {
                x: 50,
                y: 0,
                w: 100,
                h: 100
            }
        );
        let back = map_back(&vec![1.0; 64 * 64], 64, 64, &g);
        assert_eq!(back.len(), 200 * 100);
        assert_eq!(back[0], 0.0);
        assert_eq!(back[100], 1.0);

        // Padded below to the 200 × 200 square: the input's top half is the image.
        let (_, g) = prepare(&img, &spec(ResizeMode::PadSquare, [64, 64]));
        assert_eq!(
            g.placement,
            Placement::Crop {
                x: 0,
                y: 0,
                w: 200,
                h: 200
            }
        );
        let map: Vec<f32> = (0..64 * 64).map(|i| (i / 64) as f32).collect();
        let back = map_back(&map, 64, 64, &g);
        assert_eq!(back.len(), 200 * 100);
        assert_eq!(back[0], 0.0);
        // The image's last row is the square's row 99 of 200: input row ≈ 31.5.
        let last = back[99 * 200 + 7];
        assert!((last - 31.5).abs() < 0.5, "{last}");
    }

    #[test]
    fn bilinear_identity_and_constant() {
        let map: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_region(&map, 4, (0, 0, 4, 4), 4, 4), map);
        let g = Geometry {
            width: 1,
            height: 1,
            placement: Placement::Stretch,
        };
        assert_eq!(map_back(&[0.25; 16], 4, 4, &g), vec![0.25]);
    }

    #[test]
    fn alpha_over_white() {
        let mut rgba = image::RgbaImage::new(1, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        assert_eq!(
            to_rgb(DynamicImage::ImageRgba8(rgba)).get_pixel(0, 0).0,
            [255, 255, 255]
        );
    }
}
