//! transformers' `CLIPImageProcessor` (the numpy/PIL processor of transformers 4.x), bit for
//! bit, from a model folder's `preprocessor_config.json`
//! (spec: `tests/fixtures/gen/CLIP_PREPROCESS.md`):
//!
//! 1. the image is 8-bit RGB (`convert("RGB")`: gray replicated, alpha dropped — what
//!    `image::open(..).to_rgb8()` gives for 8-bit PNGs);
//! 2. resize: `{shortest_edge: S}` → short side S, long side `int(S · long / short)`
//!    (truncated), or `{height, width}` → that size; Pillow's resampler ([`pil_resize`]);
//! 3. centre crop on the uint8 image, offsets `(size − crop) // 2` (floor), zero padding
//!    where the crop reaches past the image;
//! 4. rescale `f32(f64(v) · rescale_factor)`, normalise `(x − f32(mean)) / f32(std)` in f32:
//!    a table per channel and uint8 value;
//! 5. channels first, planes R, G, B.
use super::pil_resize::{self, Filter, PassOrder};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;
use std::path::Path;

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The `size` of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// `{"shortest_edge": S}`: the short side becomes S, the aspect ratio is kept.
    ShortestEdge(u32),
    /// `{"height": H, "width": W}`: exactly that size.
    Exact { height: u32, width: u32 },
}

/// The settings of a `CLIPImageProcessor` (defaults: transformers' constructor's).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Filter,
    pub do_center_crop: bool,
    pub crop_height: u32,
    pub crop_width: u32,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Which Pillow's pass order the resize follows (not a transformers setting: the
    /// Pillow version installed beside it).
    pub pass_order: PassOrder,
}

impl Default for ClipProcessor {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Filter::Bicubic,
            do_center_crop: true,
            crop_height: 224,
            crop_width: 224,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            pass_order: PassOrder::default(),
        }
    }
}

fn key_error(file: &Path, key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: `{key}` {msg}", file.display())
}

/// A non-negative integer (JSON integers, or floats with an integral value as Python's
/// `int()` would take them).
fn uint(file: &Path, key: &str, v: &Value) -> Result<u32> {
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| key_error(file, key, format!("must be a positive integer, not {v}")))
}

/// A boolean key; `null` is Python's `None`, which the processor treats as false.
fn flag(
    file: &Path,
    obj: &serde_json::Map<String, Value>,
    key: &str,
    default: bool,
) -> Result<bool> {
    match obj.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Null) => Ok(false),
        Some(v) => Err(key_error(
            file,
            key,
            format!("must be true or false, not {v}"),
        )),
    }
}

/// `image_mean` / `image_std`: one number for every channel, or three.
fn per_channel(file: &Path, key: &str, v: Option<&Value>, default: [f64; 3]) -> Result<[f64; 3]> {
    let bad = |v: &Value| {
        key_error(
            file,
            key,
            format!("must be a number or a list of 3 numbers, not {v}"),
        )
    };
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(x @ Value::Number(n)) => n.as_f64().map(|f| [f; 3]).ok_or_else(|| bad(x)),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().ok_or_else(|| bad(x))?;
            }
            Ok(out)
        }
        Some(v) => Err(bad(v)),
    }
}

/// A size dict's `height` and `width`.
fn height_width(
    file: &Path,
    key: &str,
    m: &serde_json::Map<String, Value>,
) -> Result<Option<(u32, u32)>> {
    match (m.get("height"), m.get("width")) {
        (Some(h), Some(w)) => Ok(Some((
            uint(file, &format!("{key}.height"), h)?,
            uint(file, &format!("{key}.width"), w)?,
        ))),
        _ => Ok(None),
    }
}

impl ClipProcessor {
    /// `CLIPImageProcessor(**json)`: the keys it reads (others, e.g. `image_processor_type`,
    /// are ignored); an unusable value is an error naming `file` and the key.
    pub fn from_json(text: &str, file: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("{}: not an image-processor config", file.display()))?;
        let Value::Object(obj) = v else {
            bail!(
                "{}: not an image-processor config (not a JSON object)",
                file.display()
            );
        };
        let d = Self::default();
        // get_size_dict(size, default_to_square=False), then CLIPImageProcessor.resize.
        let mut size = match obj.get("size") {
            None | Some(Value::Null) => d.size,
            Some(n @ Value::Number(_)) => ResizeTo::ShortestEdge(uint(file, "size", n)?),
            Some(Value::Array(a)) if a.len() == 2 => ResizeTo::Exact {
                height: uint(file, "size[0]", &a[0])?,
                width: uint(file, "size[1]", &a[1])?,
            },
            Some(Value::Object(m)) => match m.get("shortest_edge") {
                Some(s) => ResizeTo::ShortestEdge(uint(file, "size.shortest_edge", s)?),
                None => match height_width(file, "size", m)? {
                    Some((height, width)) => ResizeTo::Exact { height, width },
                    None => {
                        return Err(key_error(
                            file,
                            "size",
                            "must have `shortest_edge`, or `height` and `width`",
                        ))
                    }
                },
            },
            Some(v) => {
                return Err(key_error(
                    file,
                    "size",
                    format!("must be a number, [height, width] or an object, not {v}"),
                ))
            }
        };
        // Kosmos-2's legacy flag: the shortest edge as a square.
        if obj.get("use_square_size").and_then(Value::as_bool) == Some(true) {
            if let ResizeTo::ShortestEdge(s) = size {
                size = ResizeTo::Exact {
                    height: s,
                    width: s,
                };
            }
        }
        // get_size_dict(crop_size, default_to_square=True).
        let (crop_height, crop_width) = match obj.get("crop_size") {
            None | Some(Value::Null) => (d.crop_height, d.crop_width),
            Some(n @ Value::Number(_)) => {
                let s = uint(file, "crop_size", n)?;
                (s, s)
            }
            Some(Value::Array(a)) if a.len() == 2 => (
                uint(file, "crop_size[0]", &a[0])?,
                uint(file, "crop_size[1]", &a[1])?,
            ),
            Some(Value::Object(m)) => height_width(file, "crop_size", m)?
                .ok_or_else(|| key_error(file, "crop_size", "must have `height` and `width`"))?,
            Some(v) => {
                return Err(key_error(
                    file,
                    "crop_size",
                    format!("must be a number, [height, width] or an object, not {v}"),
                ))
            }
        };
        let resample =
            match obj.get("resample") {
                None => d.resample,
                // None reaches image_transforms.resize, whose default is BILINEAR.
                Some(Value::Null) => Filter::Bilinear,
                Some(v) => {
                    let n = v.as_i64().ok_or_else(|| {
                        key_error(
                            file,
                            "resample",
                            format!("must be a PIL resampling number, not {v}"),
                        )
                    })?;
                    Filter::from_pil(n).ok_or_else(|| {
                        key_error(
                            file,
                            "resample",
                            format!(
                            "is {n}{}; the CLIP judge implements Pillow's convolution filters 1 \
                             (LANCZOS), 2 (BILINEAR), 3 (BICUBIC, CLIP's), 4 (BOX) and 5 (HAMMING)",
                            Filter::pil_name(n).map(|s| format!(" ({s})")).unwrap_or_default()
                        ),
                        )
                    })?
                }
            };
        let rescale_factor = match obj.get("rescale_factor") {
            None => d.rescale_factor,
            Some(v) => v.as_f64().ok_or_else(|| {
                key_error(file, "rescale_factor", format!("must be a number, not {v}"))
            })?,
        };
        Ok(Self {
            do_resize: flag(file, &obj, "do_resize", d.do_resize)?,
            size,
            resample,
            do_center_crop: flag(file, &obj, "do_center_crop", d.do_center_crop)?,
            crop_height,
            crop_width,
            do_rescale: flag(file, &obj, "do_rescale", d.do_rescale)?,
            rescale_factor,
            do_normalize: flag(file, &obj, "do_normalize", d.do_normalize)?,
            image_mean: per_channel(file, "image_mean", obj.get("image_mean"), d.image_mean)?,
            image_std: per_channel(file, "image_std", obj.get("image_std"), d.image_std)?,
            pass_order: d.pass_order,
        })
    }

    /// [`ClipProcessor::from_json`] of a file.
    pub fn from_file(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        Self::from_json(&text, file)
    }

    /// The same settings with the pass order of Pillow major version `major`.
    pub fn with_pillow_version(mut self, major: u32) -> Self {
        self.pass_order = PassOrder::for_pillow(major);
        self
    }

    /// The resize step's output `(width, height)` for a `w`×`h` image
    /// (`get_resize_output_image_size`).
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        match self.size {
            ResizeTo::Exact { height, width } => (width, height),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                // int(s * long / short): Python's true division (correctly rounded f64),
                // truncated.
                let new_long = ((u64::from(s) * u64::from(long)) as f64 / f64::from(short)) as u32;
                if w <= h {
                    (s, new_long)
                } else {
                    (new_long, s)
                }
            }
        }
    }

    /// The resize step (a copy when `do_resize` is false or the size does not change).
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if !self.do_resize {
            return Ok(img.clone());
        }
        if w == 0 || h == 0 {
            bail!("cannot resize an empty {w}x{h} image");
        }
        let (ow, oh) = self.output_size(w, h);
        self.resize_to(img, ow, oh)
    }

    /// Pillow's `resize((out_w, out_h), resample)` with this processor's filter and pass
    /// order.
    pub fn resize_to(&self, img: &RgbImage, out_w: u32, out_h: u32) -> Result<RgbImage> {
        if out_w == 0 || out_h == 0 {
            bail!(
                "cannot resize a {}x{} image to {out_w}x{out_h}",
                img.width(),
                img.height()
            );
        }
        Ok(pil_resize::resize(
            img,
            out_w,
            out_h,
            self.resample,
            self.pass_order,
        ))
    }

    /// The centre-crop step (transformers' `center_crop`: floor offsets, zeros where the
    /// crop reaches past the image; the image itself when `do_center_crop` is false).
    pub fn crop(&self, img: &RgbImage) -> RgbImage {
        if !self.do_center_crop {
            return img.clone();
        }
        let (w, h) = (i64::from(img.width()), i64::from(img.height()));
        let (cw, ch) = (i64::from(self.crop_width), i64::from(self.crop_height));
        let top = (h - ch).div_euclid(2);
        let left = (w - cw).div_euclid(2);
        RgbImage::from_fn(self.crop_width, self.crop_height, |x, y| {
            let (sx, sy) = (left + i64::from(x), top + i64::from(y));
            if (0..w).contains(&sx) && (0..h).contains(&sy) {
                *img.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        })
    }

    /// Resize then crop: the uint8 image that is rescaled and normalised.
    pub fn pixels_u8(&self, img: &RgbImage) -> Result<RgbImage> {
        Ok(self.crop(&self.resize(img)?))
    }

    /// Rescale and normalise as a table: `lut[c][v]` is the pixel value of uint8 `v` in
    /// channel `c`, computed as numpy does (`f32(f64(v) · rescale_factor)`, then
    /// `(x − f32(mean[c])) / f32(std[c])` in f32).
    pub fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, row) in lut.iter_mut().enumerate() {
            let (mean, std) = (self.image_mean[c] as f32, self.image_std[c] as f32);
            for (v, out) in row.iter_mut().enumerate() {
                let x = if self.do_rescale {
                    (v as f64 * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                *out = if self.do_normalize {
                    (x - mean) / std
                } else {
                    x
                };
            }
        }
        lut
    }

    /// `pixel_values[0]` of one image: `[3, height, width]` f32 (planes R, G, B), with its
    /// height and width.
    pub fn pixel_values(&self, img: &RgbImage) -> Result<(Vec<f32>, usize, usize)> {
        Ok(Self::apply_lut(&self.lut(), &self.pixels_u8(img)?))
    }

    /// `lut` applied to a uint8 image, channels first.
    pub fn apply_lut(lut: &[[f32; 256]; 3], img: &RgbImage) -> (Vec<f32>, usize, usize) {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        let (r, rest) = data.split_at_mut(h * w);
        let (g, b) = rest.split_at_mut(h * w);
        for (i, p) in img.pixels().enumerate() {
            r[i] = lut[0][usize::from(p[0])];
            g[i] = lut[1][usize::from(p[1])];
            b[i] = lut[2][usize::from(p[2])];
        }
        (data, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ClipProcessor> {
        ClipProcessor::from_json(json, Path::new("dir/preprocessor_config.json"))
    }

    #[test]
    fn output_size_truncates_like_python_int() {
        let p = ClipProcessor::default();
        assert_eq!(p.output_size(300, 451), (224, 336)); // 336.75
        assert_eq!(p.output_size(451, 300), (336, 224));
        assert_eq!(p.output_size(384, 303), (283, 224)); // 283.88
        assert_eq!(p.output_size(333, 517), (224, 347)); // 347.77
        assert_eq!(p.output_size(512, 512), (224, 224));
        assert_eq!(p.output_size(120, 160), (224, 298));
    }

    #[test]
    fn config_keys_as_transformers_reads_them() {
        let p = parse("{}").unwrap();
        assert_eq!(p, ClipProcessor::default());
        let p =
            parse(r#"{"size": 256, "crop_size": 240, "image_mean": 0.5, "resample": 2}"#).unwrap();
        assert_eq!(p.size, ResizeTo::ShortestEdge(256));
        assert_eq!((p.crop_height, p.crop_width), (240, 240));
        assert_eq!(p.image_mean, [0.5; 3]);
        assert_eq!(p.resample, Filter::Bilinear);
        let p = parse(
            r#"{"size": {"height": 20, "width": 30}, "crop_size": {"height": 10, "width": 12}}"#,
        )
        .unwrap();
        assert_eq!(
            p.size,
            ResizeTo::Exact {
                height: 20,
                width: 30
            }
        );
        assert_eq!(p.output_size(7, 9), (30, 20));
        assert_eq!((p.crop_height, p.crop_width), (10, 12));
        for (json, key) in [
            (r#"{"resample": 0}"#, "`resample` is 0 (NEAREST)"),
            (r#"{"resample": 7}"#, "`resample` is 7 (MKS2021)"),
            (r#"{"size": {"longest_edge": 3}}"#, "`size`"),
            (r#"{"crop_size": {"shortest_edge": 3}}"#, "`crop_size`"),
            (r#"{"size": {"shortest_edge": 0}}"#, "`size.shortest_edge`"),
            (r#"{"image_std": [1, 2]}"#, "`image_std`"),
            (r#"{"do_resize": "yes"}"#, "`do_resize`"),
        ] {
            let e = parse(json).map(|_| ()).unwrap_err().to_string();
            assert!(e.starts_with("dir/preprocessor_config.json: "), "{e}");
            assert!(e.contains(key), "{json}: {e}");
        }
    }

    #[test]
    fn crop_pads_with_zeros_like_transformers() {
        // 3x2 image, crop 5x4: top = (2-4)//2 = -1, left = (3-5)//2 = -1.
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([(10 * y + x + 1) as u8; 3]));
        let p = ClipProcessor {
            crop_width: 5,
            crop_height: 4,
            ..ClipProcessor::default()
        };
        let c = p.crop(&img);
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|y| (0..5).map(|x| c.get_pixel(x, y)[0]).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![0, 0, 0, 0, 0],
                vec![0, 1, 2, 3, 0],
                vec![0, 11, 12, 13, 0],
                vec![0, 0, 0, 0, 0],
            ]
        );
    }
}
