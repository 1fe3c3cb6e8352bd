//! What the workspace's tests share: where the fixtures are, the reference tensors the
//! generator scripts in `tests/fixtures/gen/` recorded, seeded inputs and error measures.
//! Test code: it panics on failure instead of returning errors.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
#![allow(clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `tests/fixtures/` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tensors of `tests/fixtures/{name}-reference.safetensors`.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let file = fixtures().join(format!("{name}-reference.safetensors"));
    candle_core::safetensors::load(&file, &Device::Cpu).expect("reference file")
}

/// max |a|, computed in `a`'s dtype.
fn max_abs_in_own_dtype(a: &Tensor) -> f64 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// max |a|, computed in f32.
pub fn max_abs(a: &Tensor) -> f32 {
    max_abs_in_own_dtype(&a.to_dtype(DType::F32).unwrap()) as f32
}

/// max |a - b|, computed in f32; the shapes must agree.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

/// max |a - b| / max |b|, computed in f32.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b).max(1e-12)
}

/// Standard-normal values of `shape` from `rng`, as f64 (the finite-difference tests' inputs).
pub fn randn_f64(rng: &mut NoiseRng, shape: &[usize]) -> Tensor {
    rng.randn(shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// Standard-normal f64 values of `shape` from a generator seeded with `seed`.
pub fn seeded_randn_f64(shape: &[usize], seed: u64) -> Tensor {
    randn_f64(&mut NoiseRng::new(seed), shape)
}

/// max |a - b| of two f64 tensors, in f64.
pub fn max_diff_f64(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!((a.dtype(), b.dtype()), (DType::F64, DType::F64));
    max_abs_in_own_dtype(&(a - b).unwrap())
}

/// Writes `n` gradient images of `size`² pixels into `dir/images` (`{i}.png`) and masks of their
/// left halves into `dir/masks`: training inputs for the stages' command-line tests.
pub fn write_training_images(dir: &Path, n: u32, size: u32) -> (PathBuf, PathBuf) {
    let (img, masks) = (dir.join("images"), dir.join("masks"));
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for i in 0..n {
        image::RgbImage::from_fn(size, size, |x, y| {
            image::Rgb([(x * 4 + i * 30) as u8, (y * 4) as u8, 128])
        })
        .save(img.join(format!("{i}.png")))
        .unwrap();
        image::GrayImage::from_fn(size, size, |x, _| {
            image::Luma([if x < size / 2 { 255 } else { 0 }])
        })
        .save(masks.join(format!("{i}.png")))
        .unwrap();
    }
    (img, masks)
}

/// Starts `cmd`, kills it (SIGKILL) as soon as `checkpoint` exists, and says whether it was
/// killed before it finished (`false`: it wrote `out` first, so there is nothing to resume).
/// A run that was killed must have left its checkpoint and nothing at `out`.
pub fn kill_at_first_checkpoint(
    mut cmd: std::process::Command,
    checkpoint: &Path,
    out: &Path,
) -> bool {
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    while !checkpoint.exists() && started.elapsed().as_secs() < 120 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if out.exists() {
        return false;
    }
    assert!(
        checkpoint.exists(),
        "no checkpoint was written before the run ended"
    );
    true
}
