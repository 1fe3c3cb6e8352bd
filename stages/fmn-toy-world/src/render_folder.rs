//! Renders with their exact masks, as a segmenter is trained and measured on them: read from a
//! folder as `fmn-toy render` writes it (`NAME.png` + `masks/NAME.png`), or drawn afresh.
use crate::augment::{augment, Augment};
use crate::dataset::MASKS;
use crate::render::render;
use crate::scene::{Scene, SceneSpec, IMAGE_SIZE};
use crate::scene_rng;
use image::{GrayImage, RgbImage};
use std::path::{Path, PathBuf};

/// One render and its mask (255 on the figure, 0 elsewhere).
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: RgbImage,
    pub mask: GrayImage,
}

/// Why a folder of renders could not be read; each names the folder or file.
#[derive(Debug, thiserror::Error)]
pub enum RenderFolderError {
    /// The folder is missing or unreadable (the message names it).
    #[error("{0}")]
    Folder(std::io::Error),
    #[error("cannot read image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: toy renders are {IMAGE_SIZE}x{IMAGE_SIZE} with a mask of the same size")]
    Size { path: PathBuf },
    #[error("no image with a mask ({MASKS}/NAME.png) in {0}")]
    Empty(PathBuf),
}

fn open(path: &Path) -> Result<image::DynamicImage, RenderFolderError> {
    let err = |message: String| RenderFolderError::Image {
        path: path.to_path_buf(),
        message,
    };
    image::ImageReader::open(path)
        .map_err(|e| err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(e.to_string()))
}

/// Reads a folder as `fmn-toy render` writes it: `NAME.png` (or `.jpg`, `.jpeg`) with its mask
/// `masks/NAME.png`; images without a mask are left out. Images must be 64×64.
pub fn load_render_folder(dir: &Path) -> Result<Vec<Sample>, RenderFolderError> {
    let (images, _) = fmn_core::images::list_images(dir).map_err(RenderFolderError::Folder)?;
    let mut samples = Vec::new();
    for path in images {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let mask_path = dir.join(MASKS).join(format!("{stem}.png"));
        if !mask_path.is_file() {
            continue;
        }
        let image = open(&path)?.into_rgb8();
        let mask = open(&mask_path)?.into_luma8();
        if image.dimensions() != (IMAGE_SIZE, IMAGE_SIZE) || mask.dimensions() != image.dimensions()
        {
            return Err(RenderFolderError::Size { path });
        }
        samples.push(Sample { image, mask });
    }
    if samples.is_empty() {
        return Err(RenderFolderError::Empty(dir.to_path_buf()));
    }
    Ok(samples)
}

/// `count` renders drawn with `seed` (image `i` from [`scene_rng`]`(seed, i)`, as
/// `fmn-toy render --seed SEED` draws them).
pub fn render_samples(seed: u64, count: usize) -> Vec<Sample> {
    (0..count as u64)
        .map(|i| {
            let mut rng = scene_rng(seed, i);
            let scene = Scene::random(&mut rng, &SceneSpec::default());
            let (image, mask) = render(&scene);
            Sample { image, mask }
        })
        .collect()
}

/// The same renders passed through every degradation ([`Augment::default`]`.always()`, image
/// `i` with `scene_rng(seed ^ 0xdead, i)`): what a small diffusion model's output looks like.
pub fn degraded_samples(seed: u64, count: usize) -> Vec<Sample> {
    let aug = Augment::default().always();
    render_samples(seed, count)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = scene_rng(seed ^ 0xdead, i as u64);
            Sample {
                image: augment(&s.image, &mut rng, &aug),
                mask: s.mask,
            }
        })
        .collect()
}

/// Intersection over union of two masks, each pixel in the mask when it is 128 or more; 1 when
/// both are empty. The masks must have the same size.
pub fn mask_iou(a: &GrayImage, b: &GrayImage) -> f64 {
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
