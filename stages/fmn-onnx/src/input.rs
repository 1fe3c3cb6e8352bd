//! How an image becomes a model's input: the preset's `input:` keys ([`InputSpec`]) and the
//! one [`prepare`] every stage feeds its models with.
//!
//! ```yaml
//! input:
//!   size: [64, 64]         # width, height fed to the model (required)
//!   resize: stretch        # stretch | letterbox | crop | pad_square
//!   filter: triangle       # nearest | triangle | catmull_rom | gaussian | lanczos3 | opencv_linear
//!   channels: rgb          # rgb | bgr
//!   range: unit            # unit (pixel / 255) | unit_reciprocal (pixel · f32(1/255))
//!                          # | image_max (pixel / the image's largest value)
//!   mean: [0.5, 0.5, 0.5]  # after range scaling: (v - mean) / std, in model channel order
//!   std: [0.5, 0.5, 0.5]
//!   pad: [0, 0, 0]         # letterbox / pad_square border colour (0-255, RGB)
//! ```
//!
//! `resize: pad_square`, `filter: opencv_linear` and `range: unit_reciprocal` are what NudeNet
//! 3.4.2 feeds its detector (OpenCV's `copyMakeBorder` + `blobFromImage`), value for value:
//! see `tests/fixtures/gen/NUDENET_3.4.2.md`.
pub use crate::geometry::{Geometry, Placement};
use image::imageops::FilterType;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// How the image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale each side to the input size, ignoring the aspect ratio.
    #[default]
    Stretch,
    /// Scale to fit inside, keeping the aspect ratio, centred, and pad the rest with `pad`.
    Letterbox,
    /// Cut the largest centred region of the input's aspect ratio, then scale it.
    Crop,
    /// Pad the bottom or the right with `pad` to a square of the longer side, the image at
    /// the top-left, then scale the square (NudeNet 3.x: `copyMakeBorder(0, m - h, 0, m - w)`
    /// then `blobFromImage`). No offset to undo: boxes only scale back by `m / size`.
    PadSquare,
}

/// The resampling filter of every resize: the `image` crate's filters, which widen with the
/// scale when shrinking, so they smooth rather than skip pixels; or OpenCV's bilinear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    Nearest,
    /// Linear (tent) weights.
    #[default]
    Triangle,
    CatmullRom,
    Gaussian,
    Lanczos3,
    /// OpenCV's `cv::resize(..., INTER_LINEAR)` on 8-bit images, in its own fixed-point
    /// arithmetic (2 × 2 source pixels per output pixel, no widening when shrinking):
    /// what models preprocessed with OpenCV (`cv2.dnn.blobFromImage`) were fed.
    OpencvLinear,
}

impl Filter {
    /// The `image` crate's filter (`None`: OpenCV's, done here).
    fn image_filter(self) -> Option<FilterType> {
        match self {
            Filter::Nearest => Some(FilterType::Nearest),
            Filter::Triangle => Some(FilterType::Triangle),
            Filter::CatmullRom => Some(FilterType::CatmullRom),
            Filter::Gaussian => Some(FilterType::Gaussian),
            Filter::Lanczos3 => Some(FilterType::Lanczos3),
            Filter::OpencvLinear => None,
        }
    }
}

/// The order of the three channels the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

/// How a pixel value (0-255) is scaled before mean/std.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueRange {
    /// value / 255 (an f32 division).
    #[default]
    Unit,
    /// value · f32(1/255) (one f32 multiply by `0x3b808081`): OpenCV's `blobFromImage(img,
    /// 1/255.0)`, which differs from `Unit` by one ulp in places. (OpenCV subtracts its mean
    /// before scaling; here `mean`/`std` apply after, so keep them at 0 / 1 to be exact.)
    UnitReciprocal,
    /// value / (the largest channel value in the image), as rembg feeds U²-Net and IS-Net.
    ImageMax,
}

/// `float32(1 / 255)`, the factor OpenCV's `blobFromImage(img, 1 / 255.0)` multiplies by.
pub const RECIPROCAL_255: f32 = f32::from_bits(0x3b80_8081);

/// The `input:` keys of a preset: how an image becomes `3 × height × width` floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// `[width, height]`.
    pub size: [u32; 2],
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub channels: ChannelOrder,
    #[serde(default)]
    pub range: ValueRange,
    #[serde(default = "zeros")]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    #[serde(default)]
    pub pad: [u8; 3],
}

fn zeros() -> [f32; 3] {
    [0.0; 3]
}

fn ones() -> [f32; 3] {
    [1.0; 3]
}

impl InputSpec {
    /// A spec of `[width, height]` with every other key at its default.
    pub fn new(size: [u32; 2]) -> InputSpec {
        InputSpec {
            size,
            resize: ResizeMode::default(),
            filter: Filter::default(),
            channels: ChannelOrder::default(),
            range: ValueRange::default(),
            mean: zeros(),
            std: ones(),
            pad: [0; 3],
        }
    }

    /// Checks the values serde cannot: sizes, mean and std.
    pub fn validate(&self) -> Result<(), String> {
        let [w, h] = self.size;
        if w == 0 || h == 0 || w > 8192 || h > 8192 {
            return Err(format!(
                "input.size {w}x{h} must be between 1 and 8192 on each side"
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err("input.std must be finite and non-zero".into());
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err("input.mean must be finite".into());
        }
        Ok(())
    }

    /// Floats in one prepared image (`3 × width × height`).
    pub fn values_per_image(&self) -> usize {
        let [w, h] = self.size;
        3 * w as usize * h as usize
    }
}

fn resize(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    match filter.image_filter() {
        Some(f) => image::imageops::resize(img, w, h, f),
        None => crate::cv_linear::resize_linear(img, w, h),
    }
}

/// The image as the model sees it, before its values are scaled: resized, padded or cut to
/// the spec's size (RGB, 0-255), and where the image lies in it.
pub fn prepare_pixels(img: &RgbImage, spec: &InputSpec) -> (RgbImage, Geometry) {
    let [mw, mh] = spec.size;
    let (iw, ih) = img.dimensions();
    let (canvas, placement) = match spec.resize {
        ResizeMode::Stretch => (resize(img, mw, mh, spec.filter), Placement::Stretch),
        ResizeMode::Letterbox => {
            let s = (mw as f64 / iw as f64).min(mh as f64 / ih as f64);
            let w = ((iw as f64 * s).round() as u32).clamp(1, mw);
            let h = ((ih as f64 * s).round() as u32).clamp(1, mh);
            let (x, y) = ((mw - w) / 2, (mh - h) / 2);
            let mut canvas = RgbImage::from_pixel(mw, mh, image::Rgb(spec.pad));
            let inner = resize(img, w, h, spec.filter);
            image::imageops::replace(&mut canvas, &inner, x as i64, y as i64);
            (canvas, Placement::Letterbox { x, y, w, h })
        }
        ResizeMode::Crop => {
            // The largest centred rectangle of the input's aspect ratio.
            let target = mw as f64 / mh as f64;
            let (w, h) = if iw as f64 / ih as f64 > target {
                (((ih as f64 * target).round() as u32).clamp(1, iw), ih)
            } else {
                (iw, ((iw as f64 / target).round() as u32).clamp(1, ih))
            };
            let (x, y) = ((iw - w) / 2, (ih - h) / 2);
            let cut = image::imageops::crop_imm(img, x, y, w, h).to_image();
            (
                resize(&cut, mw, mh, spec.filter),
                Placement::Crop { x, y, w, h },
            )
        }
        ResizeMode::PadSquare => {
            let m = iw.max(ih);
            let canvas = if iw == ih {
                resize(img, mw, mh, spec.filter)
            } else if spec.filter == Filter::OpencvLinear {
                // Padded row by row: a long thin image needs no m × m copy.
                crate::cv_linear::resize_linear_padded(img, m, spec.pad, mw, mh)
            } else {
                let mut square = RgbImage::from_pixel(m, m, image::Rgb(spec.pad));
                image::imageops::replace(&mut square, img, 0, 0);
                resize(&square, mw, mh, spec.filter)
            };
            let whole = Placement::Crop {
                x: 0,
                y: 0,
                w: m,
                h: m,
            };
            (canvas, whole)
        }
    };
    (
        canvas,
        Geometry {
            width: iw,
            height: ih,
            placement,
        },
    )
}

/// The canvas's planes in the spec's channel order (`3 × height × width` bytes): what
/// [`prepare`] scales.
pub fn planes(canvas: &RgbImage, channels: ChannelOrder) -> Vec<u8> {
    let plane = canvas.width() as usize * canvas.height() as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, p) in canvas.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p[channels.source(c)];
        }
    }
    out
}

impl ChannelOrder {
    /// The RGB channel that model channel `c` takes.
    fn source(self, c: usize) -> usize {
        match self {
            ChannelOrder::Rgb => c,
            ChannelOrder::Bgr => 2 - c,
        }
    }
}

/// The model input for `img` (CHW, `3 × height × width` floats, in the spec's channel order)
/// and where the image lies in it.
pub fn prepare(img: &RgbImage, spec: &InputSpec) -> (Vec<f32>, Geometry) {
    let (canvas, geometry) = prepare_pixels(img, spec);
    let max = match spec.range {
        ValueRange::ImageMax => canvas.as_raw().iter().copied().max().unwrap_or(0).max(1) as f32,
        ValueRange::Unit | ValueRange::UnitReciprocal => 255.0,
    };
    let scale = |v: u8| match spec.range {
        ValueRange::Unit | ValueRange::ImageMax => v as f32 / max,
        ValueRange::UnitReciprocal => v as f32 * RECIPROCAL_255,
    };
    let plane = canvas.width() as usize * canvas.height() as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in canvas.pixels().enumerate() {
        for c in 0..3 {
            let v = scale(p[spec.channels.source(c)]);
            data[c * plane + i] = (v - spec.mean[c]) / spec.std[c];
        }
    }
    (data, geometry)
}

/// The model input for a batch: [`prepare`] of each image, one after the other (NCHW), and
/// each image's geometry.
pub fn prepare_batch<I: std::borrow::Borrow<RgbImage>>(
    images: &[I],
    spec: &InputSpec,
) -> (Vec<f32>, Vec<Geometry>) {
    let mut data = Vec::with_capacity(images.len() * spec.values_per_image());
    let mut geometry = Vec::with_capacity(images.len());
    for img in images {
        let (values, g) = prepare(img.borrow(), spec);
        data.extend_from_slice(&values);
        geometry.push(g);
    }
    (data, geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resize: ResizeMode, size: [u32; 2]) -> InputSpec {
        InputSpec {
            resize,
            ..InputSpec::new(size)
        }
    }

    #[test]
    fn channel_order_and_normalisation() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51]));
        let mut s = spec(ResizeMode::Stretch, [2, 2]);
        s.channels = ChannelOrder::Bgr;
        s.mean = [0.5; 3];
        s.std = [0.5; 3];
        let (data, _) = prepare(&img, &s);
        assert!((data[0] - (0.2 - 0.5) / 0.5).abs() < 1e-6); // B first
        assert_eq!(data[8], 1.0); // R last
        s.range = ValueRange::ImageMax;
        let img = RgbImage::from_pixel(2, 2, image::Rgb([100, 50, 0]));
        let (data, _) = prepare(&img, &s);
        assert_eq!(data[8], 1.0); // 100 / 100
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let s: InputSpec = serde_yaml::from_str("size: [8, 4]").unwrap();
        assert_eq!(s, InputSpec::new([8, 4]));
        assert_eq!(s.filter, Filter::Triangle);
        assert_eq!(s.std, [1.0; 3]);
        let err = serde_yaml::from_str::<InputSpec>("size: [8, 8]\nsise: 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sise"), "{err}");
        let s: InputSpec = serde_yaml::from_str("size: [8, 8]\nfilter: lanczos3").unwrap();
        assert_eq!(s.filter, Filter::Lanczos3);
        assert!(InputSpec::new([0, 8]).validate().is_err());
    }

    /// The filter key changes the resize; the default is the `image` crate's Triangle.
    #[test]
    fn the_filter_is_the_one_named() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 9]));
        let want = image::imageops::resize(&img, 3, 3, FilterType::Triangle);
        let (data, _) = prepare(&img, &InputSpec::new([3, 3]));
        let red: Vec<f32> = want.pixels().map(|p| p[0] as f32 / 255.0).collect();
        assert_eq!(&data[..9], &red[..]);
        let nearest = InputSpec {
            filter: Filter::Nearest,
            ..InputSpec::new([3, 3])
        };
        assert_ne!(prepare(&img, &nearest).0, data);
    }

    /// `pad_square` pads the bottom of a landscape and the right of a portrait image with
    /// `pad`, the image at the top-left, and places the whole square.
    #[test]
    fn pad_square_pads_bottom_or_right() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([200, 100, 50]));
        let s = InputSpec {
            resize: ResizeMode::PadSquare,
            filter: Filter::Nearest,
            pad: [1, 2, 3],
            ..InputSpec::new([4, 4])
        };
        let (canvas, g) = prepare_pixels(&img, &s);
        assert_eq!(
            g.placement,
            Placement::Crop {
                x: 0,
                y: 0,
                w: 4,
                h: 4
            }
        );
        assert_eq!(canvas.get_pixel(3, 1).0, [200, 100, 50]);
        assert_eq!(canvas.get_pixel(0, 2).0, [1, 2, 3]);
        let portrait = RgbImage::from_pixel(2, 4, image::Rgb([9, 9, 9]));
        let (canvas, _) = prepare_pixels(&portrait, &s);
        assert_eq!(canvas.get_pixel(1, 3).0, [9, 9, 9]);
        assert_eq!(canvas.get_pixel(2, 0).0, [1, 2, 3]);
        // The same through OpenCV's resize, padded row by row, at another size.
        let s = InputSpec {
            filter: Filter::OpencvLinear,
            size: [2, 2],
            ..s
        };
        let (canvas, _) = prepare_pixels(&img, &s);
        let mut square = RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
        image::imageops::replace(&mut square, &img, 0, 0);
        assert_eq!(canvas, crate::resize_linear(&square, 2, 2));
        assert_eq!(canvas.get_pixel(0, 0).0, [200, 100, 50]);
        assert_eq!(canvas.get_pixel(0, 1).0, [1, 2, 3]);
    }

    /// `unit_reciprocal` multiplies by float32(1/255) (OpenCV's blobFromImage), which is
    /// not always `v / 255`; BGR planes come out blue first.
    #[test]
    fn unit_reciprocal_is_one_multiply() {
        assert_eq!(RECIPROCAL_255, (1.0f64 / 255.0) as f32);
        let differ = (0..=255u8)
            .filter(|&v| v as f32 * RECIPROCAL_255 != v as f32 / 255.0)
            .count();
        assert!(differ > 0);
        let img = RgbImage::from_pixel(1, 1, image::Rgb([255, 7, 3]));
        let s = InputSpec {
            range: ValueRange::UnitReciprocal,
            channels: ChannelOrder::Bgr,
            ..InputSpec::new([1, 1])
        };
        let (data, _) = prepare(&img, &s);
        assert_eq!(
            data,
            vec![
                3.0 * RECIPROCAL_255,
                7.0 * RECIPROCAL_255,
                255.0 * RECIPROCAL_255
            ]
        );
        assert_eq!(planes(&img, ChannelOrder::Bgr), vec![3, 7, 255]);
        let s: InputSpec = serde_yaml::from_str(
            "{size: [1, 1], resize: pad_square, filter: opencv_linear, range: unit_reciprocal}",
        )
        .unwrap();
        assert_eq!(
            (s.resize, s.filter, s.range),
            (
                ResizeMode::PadSquare,
                Filter::OpencvLinear,
                ValueRange::UnitReciprocal
            )
        );
    }
}
