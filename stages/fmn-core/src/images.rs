//! Which files are images: one list of extensions, the ones the workspace's `image` crate
//! features decode (`png`, `jpeg`), and the listing of image folders.
use std::io;
use std::path::{Path, PathBuf};

/// Extensions (compared without case) of the image files every stage reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The image files directly in `dir`, sorted by name, and how many other files it holds
/// (sub-folders are not counted). Errors name the folder.
pub fn list_images(dir: &Path) -> io::Result<(Vec<PathBuf>, usize)> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist or is not a folder", dir.display()),
        ));
    }
    let (mut images, mut others) = (Vec::new(), 0);
    for entry in std::fs::read_dir(dir).map_err(named)? {
        let path = entry.map_err(named)?.path();
        if !path.is_file() {
            continue;
        }
        if is_image_path(&path) {
            images.push(path);
        } else {
            others += 1;
        }
    }
    images.sort();
    Ok((images, others))
}

/// The image files named by `inputs`: files as given, folders' image files sorted by name
/// (not recursively). A folder without images is an error naming it.
pub fn collect_images(inputs: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let (found, _) = list_images(input)?;
            if found.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{}: no images ({}) in this folder",
                        input.display(),
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            files.extend(found);
        } else if input.exists() {
            files.push(input.clone());
        } else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file or folder", input.display()),
            ));
        }
    }
    Ok(files)
}
