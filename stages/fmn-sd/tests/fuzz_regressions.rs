//! The inputs the fuzz targets of `fuzz/` found (docs/fuzzing.md), kept in
//! `fuzz/regressions/<target>/`, run through the same readers as the targets: crash inputs and
//! inputs that take error paths. Each reader must answer without panicking; a file whose name
//! starts with `ok-` must be read, any other must be refused with an error that names the file.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_sd::io::embedding::TokenEmbedding;
use fmn_sd::io::patch::Patch;
use fmn_sd::io::single_file::keys::{map_key, Layout, TextLayout};
use fmn_sd::io::single_file::{SingleFile, SingleFileOptions};
use fmn_sd::io::weights::{read_metadata, validate_safetensors};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The kept inputs of `target`, sorted; there must be some.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = fmn_testkit::fixtures()
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

fn wants_ok(input: &Path) -> bool {
    input
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ok-"))
}

/// Copies `input` to `name` in a fresh folder (the readers look at file names), runs `read`
/// on the copy, and checks the outcome: no panic; `ok-*` read; any other refused, naming the
/// file. Returns the error message, if any.
fn check<T>(input: &Path, name: &str, read: impl Fn(&Path) -> Result<T, String>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(input, &path).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| read(&path)))
        .unwrap_or_else(|_| panic!("{} made the reader panic", input.display()));
    match (outcome, wants_ok(input)) {
        (Ok(_), true) => None,
        (Ok(_), false) => panic!("{} was read, but should be refused", input.display()),
        (Err(e), true) => panic!("{} was refused: {e}", input.display()),
        (Err(e), false) => {
            eprintln!("{}: {e}", input.display());
            assert!(
                e.contains(&path.display().to_string()),
                "{}: the error does not name the file: {e}",
                input.display()
            );
            Some(e)
        }
    }
}

#[test]
fn safetensors_headers() {
    for input in inputs("safetensors_header") {
        check(&input, "model.safetensors", |p| {
            validate_safetensors(p).map_err(|e| e.to_string())?;
            read_metadata(p).map_err(|e| e.to_string())
        });
    }
}

#[test]
fn patch_files() {
    for input in inputs("patch_load") {
        check(&input, "forget.safetensors", |p| {
            Patch::load(p).map_err(|e| e.to_string())
        });
    }
}

#[test]
fn embedding_files() {
    for input in inputs("embedding_load") {
        check(&input, "concept.safetensors", |p| {
            let e = TokenEmbedding::load(p).map_err(|e| e.to_string())?;
            assert_eq!(e.tokens.len(), e.vectors.dims()[0]);
            Ok(e)
        });
    }
}

/// Layouts the single-file target maps keys under: the standard one and extreme counts.
fn layouts() -> Vec<Layout> {
    [TextLayout::Clip, TextLayout::OpenClip]
        .into_iter()
        .flat_map(|text| {
            [(2, 4, 12), (usize::MAX, 0, usize::MAX), (0, usize::MAX, 0)].map(
                |(unet, vae, layers)| Layout {
                    text,
                    unet_layers_per_block: unet,
                    vae_up_blocks: vae,
                    text_layers: layers,
                },
            )
        })
        .collect()
}

#[test]
fn single_file_checkpoints_and_keys() {
    let layouts = layouts();
    for input in inputs("single_file") {
        let bytes = std::fs::read(&input).unwrap();
        let mut keys = vec![String::from_utf8_lossy(&bytes).to_string()];
        if let Ok((_, header)) = safetensors::SafeTensors::read_metadata(&bytes) {
            keys.extend(header.tensors().into_keys());
        }
        for key in &keys {
            for layout in &layouts {
                let _mapped = catch_unwind(|| map_key(key, layout)).unwrap_or_else(|_| {
                    panic!("{}: map_key({key:?}, {layout:?}) panicked", input.display())
                });
            }
        }
        check(&input, "checkpoint.safetensors", |p| {
            SingleFile::open(p, &SingleFileOptions::default()).map_err(|e| e.to_string())
        });
    }
}

#[cfg(feature = "train")]
#[test]
fn training_images_and_masks() {
    use fmn_sd::train::images::TrainingImages;
    let valid = tempfile::tempdir().unwrap();
    image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 7]))
        .save(valid.path().join("a.png"))
        .unwrap();
    for input in inputs("training_masks") {
        // As the mask of a valid 16×16 image, and as an image of its own.
        check(&input, "a.png", |mask| {
            TrainingImages::load(valid.path(), Some(mask.parent().unwrap()))
                .map_err(|e| e.to_string())
        });
        check(&input, "a.png", |image| {
            let set =
                TrainingImages::load(image.parent().unwrap(), None).map_err(|e| e.to_string())?;
            set.example(0, 16, None, &candle_core::Device::Cpu)
                .map_err(|e| e.to_string())
        });
    }
}
