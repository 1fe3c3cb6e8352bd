//! How an image becomes a model's input: the preset's `input:` keys ([`InputSpec`]) and the
//! one [`prepare`] every stage feeds its models with.
//!
//! ```yaml
//! input:
//!   size: [64, 64]         # width, height fed to the model (required)
//!   resize: stretch        # stretch | letterbox | crop
//!   filter: triangle       # nearest | triangle | catmull_rom | gaussian | lanczos3
//!   channels: rgb          # rgb | bgr
//!   range: unit            # unit (pixel / 255) | image_max (pixel / the image's largest value)
//!   mean: [0.5, 0.5, 0.5]  # after range scaling: (v - mean) / std, in model channel order
//!   std: [0.5, 0.5, 0.5]
//!   pad: [0, 0, 0]         # letterbox border colour (0-255, RGB)
//! ```
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
}

/// The resampling filter of every resize (the `image` crate's filters, which widen with the
/// scale when shrinking, so they smooth rather than skip pixels).
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
}

impl Filter {
    fn image_filter(self) -> FilterType {
        match self {
            Filter::Nearest => FilterType::Nearest,
            Filter::Triangle => FilterType::Triangle,
            Filter::CatmullRom => FilterType::CatmullRom,
            Filter::Gaussian => FilterType::Gaussian,
            Filter::Lanczos3 => FilterType::Lanczos3,
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

/// What a pixel value is divided by before mean/std.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueRange {
    /// value / 255.
    #[default]
    Unit,
    /// value / (the largest channel value in the image), as rembg feeds U²-Net and IS-Net.
    ImageMax,
}

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

/// Where the image lies in the model input, to bring the model's answer back to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The whole input is the whole image.
    Stretch,
    /// The image fills the input rectangle `(x, y, w, h)`; the rest is padding.
    Letterbox { x: u32, y: u32, w: u32, h: u32 },
    /// The input is the image's rectangle `(x, y, w, h)`; the rest of the image is outside.
    Crop { x: u32, y: u32, w: u32, h: u32 },
}

/// An image's size and its place in the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    pub placement: Placement,
}

fn resize(img: &RgbImage, w: u32, h: u32, filter: Filter) -> RgbImage {
    if img.dimensions() == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, w, h, filter.image_filter())
    }
}

/// The model input for `img` (CHW, `3 × height × width` floats, in the spec's channel order)
/// and where the image lies in it.
pub fn prepare(img: &RgbImage, spec: &InputSpec) -> (Vec<f32>, Geometry) {
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
    };
    let divisor = match spec.range {
        ValueRange::Unit => 255.0,
        ValueRange::ImageMax => canvas.as_raw().iter().copied().max().unwrap_or(0).max(1) as f32,
    };
    let plane = (mw * mh) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in canvas.pixels().enumerate() {
        for c in 0..3 {
            let src = match spec.channels {
                ChannelOrder::Rgb => c,
                ChannelOrder::Bgr => 2 - c,
            };
            data[c * plane + i] = (p[src] as f32 / divisor - spec.mean[c]) / spec.std[c];
        }
    }
    (
        data,
        Geometry {
            width: iw,
            height: ih,
            placement,
        },
    )
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
}
