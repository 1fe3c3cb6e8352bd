//! Segmenting a folder of images: masks, overlays and a manifest.
use crate::error::{Result, SegmentError};
use crate::imaging;
use crate::post;
use crate::runtime::Segmenter;
use image::{GrayImage, ImageFormat, RgbImage};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest's file name in the masks folder.
pub const MANIFEST: &str = "manifest.json";

/// What [`segment_folder`] does.
#[derive(Debug, Clone)]
pub struct FolderJob {
    pub images: PathBuf,
    pub masks: PathBuf,
    pub overlays: Option<PathBuf>,
    /// Images per model run (capped by what the model takes).
    pub batch_size: usize,
    /// Hide the progress bar.
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaskEntry {
    /// The image's file name.
    pub image: String,
    /// The mask's file name in the masks folder.
    pub mask: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    pub width: u32,
    pub height: u32,
    /// Mean mask value / 255: the fraction of the image that is concept.
    pub coverage: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub image: String,
    pub error: String,
}

/// The manifest written beside the masks (and printed with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub fmn_version: String,
    pub preset: String,
    pub model: PathBuf,
    pub images_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_dir: Option<PathBuf>,
    /// Images segmented.
    pub count: usize,
    /// Images that could not be read or segmented.
    pub failed: usize,
    /// Files in the folder that are not images (by extension), left alone.
    pub skipped: usize,
    pub masks: Vec<MaskEntry>,
    pub failures: Vec<Failure>,
}

fn canonical_or_absolute(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    // A folder that does not exist yet: its parent's canonical path and its name.
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            canonical_or_absolute(parent).join(name)
        }
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// The image files of `dir` (sorted by name) and how many other files it holds. Folders
/// inside are not entered.
pub fn list_images(dir: &Path) -> Result<(Vec<PathBuf>, usize)> {
    fmn_core::images::list_images(dir).map_err(|e| SegmentError::Input(e.to_string()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// `NAME.png` for an image `NAME.ext`.
pub fn mask_name(image: &Path) -> String {
    format!(
        "{}.png",
        image.file_stem().unwrap_or_default().to_string_lossy()
    )
}

fn png_bytes(
    write: impl FnOnce(&mut std::io::Cursor<Vec<u8>>) -> image::ImageResult<()>,
) -> std::io::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    write(&mut buf).map_err(std::io::Error::other)?;
    Ok(buf.into_inner())
}

fn write_png_gray(path: &Path, img: &GrayImage) -> Result<()> {
    let bytes =
        png_bytes(|b| img.write_to(b, ImageFormat::Png)).map_err(|e| SegmentError::io(path, e))?;
    fmn_core::write_atomic(path, |f| f.write_all(&bytes)).map_err(|e| SegmentError::io(path, e))
}

fn write_png_rgb(path: &Path, img: &RgbImage) -> Result<()> {
    let bytes =
        png_bytes(|b| img.write_to(b, ImageFormat::Png)).map_err(|e| SegmentError::io(path, e))?;
    fmn_core::write_atomic(path, |f| f.write_all(&bytes)).map_err(|e| SegmentError::io(path, e))
}

/// Checks a job's folders before anything is read: the images folder exists and holds images,
/// no output folder is the images folder, and no two images share a mask name. Returns the
/// images and the count of other files.
pub fn check_job(job: &FolderJob) -> Result<(Vec<PathBuf>, usize)> {
    let (images, skipped) = list_images(&job.images)?;
    let src = canonical_or_absolute(&job.images);
    let masks = canonical_or_absolute(&job.masks);
    if masks == src {
        return Err(SegmentError::Input(format!(
            "the masks folder {} is the images folder: masks would mix with (and could replace) the images; choose another --out",
            job.masks.display()
        )));
    }
    if let Some(o) = &job.overlays {
        let canonical = canonical_or_absolute(o);
        if canonical == src || canonical == masks {
            return Err(SegmentError::Input(format!(
                "the overlay folder {} must differ from the images and masks folders",
                o.display()
            )));
        }
    }
    if masks.is_file() {
        return Err(SegmentError::Input(format!(
            "--out {} is a file, not a folder",
            job.masks.display()
        )));
    }
    if images.is_empty() {
        return Err(SegmentError::Input(format!(
            "no images in {} (looked for {} files{})",
            job.images.display(),
            fmn_core::images::IMAGE_EXTENSIONS.join(", "),
            if skipped > 0 {
                format!("; {skipped} other files")
            } else {
                String::new()
            }
        )));
    }
    let mut seen: HashMap<String, &Path> = HashMap::new();
    for img in &images {
        if let Some(other) = seen.insert(mask_name(img), img) {
            return Err(SegmentError::Input(format!(
                "{} and {} would both write mask {}",
                file_name(other),
                file_name(img),
                mask_name(img)
            )));
        }
    }
    Ok((images, skipped))
}

/// Segments every image of `job.images`, writing each mask (and overlay) as soon as it is
/// made, then the manifest. An unreadable image is recorded in the manifest's `failures` and
/// the rest go on.
pub fn segment_folder(segmenter: &mut Segmenter, job: &FolderJob) -> Result<Manifest> {
    let (images, skipped) = check_job(job)?;
    std::fs::create_dir_all(&job.masks).map_err(|e| SegmentError::io(&job.masks, e))?;
    if let Some(o) = &job.overlays {
        std::fs::create_dir_all(o).map_err(|e| SegmentError::io(o, e))?;
    }
    let mut manifest = Manifest {
        fmn_version: fmn_core::VERSION.to_string(),
        preset: segmenter.preset().name.clone(),
        model: segmenter.model_path().to_path_buf(),
        images_dir: job.images.clone(),
        overlay_dir: job.overlays.clone(),
        count: 0,
        failed: 0,
        skipped,
        masks: Vec::new(),
        failures: Vec::new(),
    };
    let bar = fmn_cli::progress::bar(images.len() as u64, "segment", job.quiet);
    let batch = job.batch_size.clamp(1, segmenter.max_batch().max(1));
    for chunk in images.chunks(batch) {
        let mut loaded: Vec<(&PathBuf, RgbImage)> = Vec::new();
        for path in chunk {
            match imaging::load_rgb(path) {
                Ok(img) => loaded.push((path, img)),
                Err(e) => {
                    bar.suspend(|| eprintln!("failed: {}: {e}", file_name(path)));
                    manifest.failures.push(Failure {
                        image: file_name(path),
                        error: e.to_string(),
                    });
                    bar.inc(1);
                }
            }
        }
        if loaded.is_empty() {
            continue;
        }
        let refs: Vec<&RgbImage> = loaded.iter().map(|(_, i)| i).collect();
        let masks = match segmenter.segment(&refs) {
            Ok(m) => m,
            Err(e) => {
                for (path, _) in &loaded {
                    bar.suspend(|| eprintln!("failed: {}: {e}", file_name(path)));
                    manifest.failures.push(Failure {
                        image: file_name(path),
                        error: e.to_string(),
                    });
                    bar.inc(1);
                }
                continue;
            }
        };
        for ((path, img), mask) in loaded.iter().zip(masks) {
            let name = mask_name(path);
            let written =
                write_png_gray(&job.masks.join(&name), &mask).and_then(|()| match &job.overlays {
                    Some(dir) => write_png_rgb(&dir.join(&name), &post::overlay(img, &mask))
                        .map(|()| Some(name.clone())),
                    None => Ok(None),
                });
            match written {
                Ok(overlay) => manifest.masks.push(MaskEntry {
                    image: file_name(path),
                    mask: name,
                    overlay,
                    width: mask.width(),
                    height: mask.height(),
                    coverage: post::coverage(&mask),
                }),
                Err(e) => {
                    bar.suspend(|| eprintln!("failed: {}: {e}", file_name(path)));
                    manifest.failures.push(Failure {
                        image: file_name(path),
                        error: e.to_string(),
                    });
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    manifest.count = manifest.masks.len();
    manifest.failed = manifest.failures.len();
    let path = job.masks.join(MANIFEST);
    fmn_core::write_json_atomic(&path, &manifest).map_err(|e| SegmentError::io(&path, e))?;
    Ok(manifest)
}
