//! A concept's training images (a folder), with optional masks (a folder of `NAME.png` per
//! image `NAME.ext`, as `fmn-segment` and `fmn-toy render` write them), turned into the
//! tensors that inversion and re-steering train on.
use crate::error::SdError;
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use std::path::{Path, PathBuf};

/// Images smaller than this on either side are refused: they carry no concept.
pub const MIN_SIDE: u32 = 16;

/// One training image and its mask (1 = concept), both of the image's size.
#[derive(Debug, Clone)]
pub struct TrainingImage {
    pub path: PathBuf,
    pub image: RgbImage,
    pub mask: Option<GrayImage>,
}

/// The images of one concept, in file-name order.
#[derive(Debug, Clone)]
pub struct TrainingImages {
    pub items: Vec<TrainingImage>,
}

/// One training example at the training resolution.
#[derive(Debug, Clone)]
pub struct Example {
    /// `[1, 3, S, S]` in [-1, 1], as the VAE encoder takes it.
    pub pixels: Tensor,
    /// `[1, 1, S, S]` in [0, 1]; `None` when the set has no masks.
    pub mask: Option<Tensor>,
}

fn invalid(msg: String) -> SdError {
    SdError::Invalid(msg)
}

/// The image files directly in `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, SdError> {
    let (paths, _) =
        fmn_core::images::list_images(dir).map_err(|e| invalid(format!("images folder {e}")))?;
    if paths.is_empty() {
        return Err(invalid(format!(
            "images folder {} holds no images ({})",
            dir.display(),
            fmn_core::images::IMAGE_EXTENSIONS.join(", ")
        )));
    }
    Ok(paths)
}

fn open(path: &Path) -> Result<image::DynamicImage, SdError> {
    image::ImageReader::open(path)
        .map_err(|source| SdError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| SdError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| invalid(format!("{}: not a readable image ({e})", path.display())))
}

impl TrainingImages {
    /// Reads every image of `images`; with `masks`, the mask `NAME.png` of each image `NAME.ext`,
    /// which must exist and have the image's size.
    pub fn load(images: &Path, masks: Option<&Path>) -> Result<Self, SdError> {
        let mut items = Vec::new();
        for path in list_images(images)? {
            let image = open(&path)?.to_rgb8();
            if image.width() < MIN_SIDE || image.height() < MIN_SIDE {
                return Err(invalid(format!(
                    "{}: {}x{} is too small (at least {MIN_SIDE}x{MIN_SIDE})",
                    path.display(),
                    image.width(),
                    image.height()
                )));
            }
            let mask = match masks {
                None => None,
                Some(dir) => Some(load_mask(dir, &path, &image)?),
            };
            items.push(TrainingImage { path, image, mask });
        }
        Ok(Self { items })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn has_masks(&self) -> bool {
        self.items.first().is_some_and(|i| i.mask.is_some())
    }

    /// Image `index` as a `size`×`size` example: the largest centred square, or with `augment`
    /// a random square of 80–100% of the short side at a random place, flipped at random.
    pub fn example(
        &self,
        index: usize,
        size: u32,
        augment: Option<&mut NoiseRng>,
        device: &Device,
    ) -> Result<Example, SdError> {
        let item = &self.items[index];
        let (w, h) = item.image.dimensions();
        let short = w.min(h);
        let (side, x, y, flip) = match augment {
            None => (short, (w - short) / 2, (h - short) / 2, false),
            Some(rng) => {
                let side = ((short as f64) * (0.8 + 0.2 * rng.uniform())).round() as u32;
                let side = side.clamp(1, short);
                let x = rng.below(0, (w - side + 1) as usize) as u32;
                let y = rng.below(0, (h - side + 1) as usize) as u32;
                (side, x, y, rng.uniform() < 0.5)
            }
        };
        let prepare = |img: &image::DynamicImage| {
            let img = img
                .crop_imm(x, y, side, side)
                .resize_exact(size, size, FilterType::Triangle);
            if flip {
                img.fliph()
            } else {
                img
            }
        };
        let rgb = prepare(&image::DynamicImage::ImageRgb8(item.image.clone())).to_rgb8();
        let s = size as usize;
        let pixels = Tensor::from_vec(rgb.into_raw(), (s, s, 3), device)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .affine(2.0 / 255.0, -1.0)?
            .unsqueeze(0)?;
        let mask = match &item.mask {
            None => None,
            Some(m) => {
                let m = prepare(&image::DynamicImage::ImageLuma8(m.clone())).to_luma8();
                Some(
                    Tensor::from_vec(m.into_raw(), (1, 1, s, s), device)?
                        .to_dtype(DType::F32)?
                        .affine(1.0 / 255.0, 0.0)?,
                )
            }
        };
        Ok(Example { pixels, mask })
    }
}

fn load_mask(dir: &Path, image_path: &Path, image: &RgbImage) -> Result<GrayImage, SdError> {
    let stem = image_path.file_stem().unwrap_or_default().to_string_lossy();
    let path = dir.join(format!("{stem}.png"));
    if !path.is_file() {
        return Err(invalid(format!(
            "mask {} for image {} is missing (masks are NAME.png per image NAME.ext)",
            path.display(),
            image_path.display()
        )));
    }
    let mask = open(&path)?.to_luma8();
    if mask.dimensions() != image.dimensions() {
        return Err(invalid(format!(
            "mask {} is {}x{} but image {} is {}x{}",
            path.display(),
            mask.width(),
            mask.height(),
            image_path.display(),
            image.width(),
            image.height()
        )));
    }
    Ok(mask)
}
