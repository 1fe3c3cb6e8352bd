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

/// A random number source for tests that pick a point at random: seeded from the clock, or
/// from `$FMN_TEST_SEED` to replay a run; the seed is printed, so a failure can be replayed.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(what: &str) -> Self {
        let seed = std::env::var("FMN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
        eprintln!("{what}: FMN_TEST_SEED={seed}");
        Self(seed)
    }

    /// Uniform in `0..n` (splitmix64).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// How a run started by [`kill_when`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Killed {
    /// Killed (SIGKILL) after its checkpoint reached the point; nothing was at `out`.
    Midway,
    /// It wrote `out` before the point was seen: nothing to resume.
    Finished,
}

/// Starts `cmd`, and kills it with SIGKILL once its checkpoint's `progress.json` satisfies
/// `reached`, after a further `delay_ms` (so that the kill can land in the middle of a step
/// or of a checkpoint write). A killed run must have left a checkpoint and nothing at `out`.
pub fn kill_when(
    mut cmd: std::process::Command,
    progress: &Path,
    out: &Path,
    reached: impl Fn(&serde_json::Value) -> bool,
    delay_ms: u64,
) -> Killed {
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() || started.elapsed().as_secs() > 300 {
            break;
        }
        let seen = std::fs::read(progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if seen.as_ref().is_some_and(&reached) {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if out.exists() {
        return Killed::Finished;
    }
    assert!(
        progress.exists(),
        "no checkpoint was written before the run ended"
    );
    Killed::Midway
}

/// Kills `cmd` at a random checkpoint of a single-stage run of `steps` steps that checkpoints
/// every `every` steps (its `progress.json` records `step`), the last one left out so that
/// work remains, then a random 0-19 ms later; see [`kill_when`].
pub fn kill_at_random_step(
    cmd: std::process::Command,
    progress: &Path,
    out: &Path,
    steps: usize,
    every: usize,
) -> Killed {
    let mut rng = TestRng::new("kill point");
    let checkpoints = steps.saturating_sub(1) / every;
    let at = (rng.below(checkpoints.saturating_sub(1).max(1) as u64) as usize + 1) * every;
    let delay = rng.below(20);
    eprintln!("killing after step {at} + {delay} ms");
    kill_when(
        cmd,
        progress,
        out,
        |p| p["step"].as_u64().is_some_and(|s| s as usize >= at),
        delay,
    )
}

/// The JSON document a stage printed on stdout (`--json`); fails with its stderr when the run
/// failed.
pub fn json_of(res: &std::process::Output) -> serde_json::Value {
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    serde_json::from_slice(&res.stdout).unwrap()
}

/// The stderr of a stage run that was refused: exit status 1 and nothing written at `out`.
pub fn refused(res: &std::process::Output, out: &Path) -> String {
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(!out.exists(), "{} was written: {err}", out.display());
    err
}

/// Copies folder `src` to `dst`, recursively (a model folder a test may change).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}
