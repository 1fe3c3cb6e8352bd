//! Two processes at once on the same files. Given the same `--out`, the first run holds the
//! output's lock for its whole run and writes it whole; the second fails at once (exit 1) with
//! an error naming the output and the lock, and leaves nothing. Two runs building the same
//! preservation cache at once both succeed and leave one whole cache file.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_e2e::{bin, read_json, repo_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sd1_tiny() -> PathBuf {
    repo_root().join("tests/fixtures/sd1-tiny")
}

fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..2u32 {
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8 + i * 40) as u8, 60])
        })
        .save(dir.join(format!("{i}.png")))
        .unwrap();
    }
}

/// `.{name}.lock` beside `out` (fmn_core::lock::lock_path).
fn lock_of(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy();
    out.with_file_name(format!(".{name}.lock"))
}

/// Starts `first`, waits until it holds `out`'s lock, runs `second` to its end while the first
/// still runs, then waits for the first. Returns (first, second).
fn race(mut first: Command, mut second: Command, out: &Path) -> (Output, Output) {
    let lock = lock_of(out);
    let child = first
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut child = child;
    while !lock.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before its lock was seen: {:?}",
            child.wait_with_output().unwrap()
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no lock");
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = second.output().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first run ended before the second did: make it longer"
    );
    (child.wait_with_output().unwrap(), second)
}

fn assert_refused_as_busy(second: &Output, out: &Path) {
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another process") && err.contains(&out.display().to_string()),
        "{err}"
    );
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Names in `dir` other than `keep`: staging folders, temporary files, locks left behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

fn resteer(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("fmn-resteer"));
    cmd.arg("--model")
        .arg(sd1_tiny())
        .args(["--concept", "bob", "--kind", "object", "-q"])
        .args(extra)
        .arg("--out")
        .arg(out);
    cmd
}

fn patch_tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut t: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect();
    t.sort();
    assert!(!t.is_empty(), "{}: no tensors", path.display());
    t
}

#[test]
fn a_second_training_run_on_the_same_out_fails_at_once_and_the_first_writes_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    write_images(&images);
    let runs = tmp.path().join("runs");
    let out = runs.join("p.safetensors");
    let cache = tmp.path().join("cache").display().to_string();
    let images = images.display().to_string();
    let args = [
        "--preset",
        "original",
        "--steps",
        "60",
        "--checkpoint-every",
        "5",
        "--images",
        &images,
        "--cache-dir",
        &cache,
    ];
    let (first, second) = race(resteer(&out, &args), resteer(&out, &args), &out);
    assert_ok(&first);
    assert_refused_as_busy(&second, &out);
    // The winner's patch equals a run that had the output to itself.
    let alone = tmp.path().join("alone.safetensors");
    assert_ok(&resteer(&alone, &args).output().unwrap());
    assert_eq!(patch_tensors(&out), patch_tensors(&alone));
    assert_eq!(leftovers(&runs, &["p.safetensors"]), Vec::<String>::new());
}

#[test]
fn a_second_sampling_run_into_the_same_folder_fails_and_the_first_writes_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("samples");
    let sample = || {
        let mut cmd = Command::new(bin("fmn-sample"));
        cmd.arg("--model")
            .arg(sd1_tiny())
            .args(["--prompt", "a photo of bob", "--steps", "50", "-q"])
            .args(["--num-images", "2", "--out"])
            .arg(&out);
        cmd
    };
    let (first, second) = race(sample(), sample(), &out);
    assert_ok(&first);
    assert_refused_as_busy(&second, &out);
    let manifest = read_json(&out.join("manifest.json"));
    let files: Vec<String> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(files.len(), 2, "{manifest}");
    for f in &files {
        image::open(out.join(f)).unwrap();
    }
    assert_eq!(leftovers(tmp.path(), &["samples"]), Vec::<String>::new());
}

#[test]
fn two_runs_building_one_preservation_cache_at_once_both_succeed_with_one_whole_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cache_arg = ["--cache-dir", &cache.display().to_string()].map(str::to_string);
    let cache_arg: Vec<&str> = cache_arg.iter().map(String::as_str).collect();
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| tmp.path().join(format!("p{i}.safetensors")))
        .collect();
    let children: Vec<_> = outs[..2]
        .iter()
        .map(|o| {
            resteer(o, &cache_arg)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert_ok(&c.wait_with_output().unwrap());
    }
    let preserve = cache.join("preserve");
    let files = leftovers(&preserve, &[]);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".safetensors"), "{files:?}");
    let cached = std::fs::read(preserve.join(&files[0])).unwrap();
    safetensors::SafeTensors::deserialize(&cached).unwrap();
    // A third run reads that cache and solves the same patch; the cache is left as it was.
    assert_ok(&resteer(&outs[2], &cache_arg).output().unwrap());
    assert_eq!(patch_tensors(&outs[0]), patch_tensors(&outs[1]));
    assert_eq!(patch_tensors(&outs[0]), patch_tensors(&outs[2]));
    assert_eq!(std::fs::read(preserve.join(&files[0])).unwrap(), cached);
}
