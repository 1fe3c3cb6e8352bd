//! The inputs the fuzz targets of `fuzz/` found (docs/fuzzing.md), kept in
//! `fuzz/regressions/<target>/`: sample manifests (`sample_manifest`) and evaluation suites
//! (`config_yaml`). Each reader must answer without panicking; a file whose name starts with
//! `ok-` must be read, any other must be refused with an error that names the file (the
//! manifest: its folder).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_eval::samples::{pair, shard_pairs, SampleDir};
use fmn_eval::suite::Suite;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// Checks the outcome of `read` on `input`: no panic; `ok-*` read; any other refused with an
/// error naming `named`.
fn check<T>(input: &Path, named: &Path, read: impl FnOnce() -> Result<T, String>) {
    let outcome = catch_unwind(AssertUnwindSafe(read))
        .unwrap_or_else(|_| panic!("{} made the reader panic", input.display()));
    match (outcome, wants_ok(input)) {
        (Ok(_), true) => {}
        (Ok(_), false) => panic!("{} was read, but should be refused", input.display()),
        (Err(e), true) => panic!("{} was refused: {e}", input.display()),
        (Err(e), false) => {
            eprintln!("{}: {e}", input.display());
            assert!(
                e.contains(&named.display().to_string()),
                "{}: the error does not name {}: {e}",
                input.display(),
                named.display()
            );
        }
    }
}

#[test]
fn sample_manifests() {
    for input in inputs("sample_manifest") {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&input, dir.path().join("manifest.json")).unwrap();
        check(&input, dir.path(), || {
            let d = SampleDir::load(dir.path(), "before").map_err(|e| format!("{e:#}"))?;
            let pairs = pair(&d, &d).map_err(|e| format!("{e:#}"))?;
            let shard = d.manifest.shard.unwrap_or(fmn_core::Shard::ALL);
            Ok(shard_pairs(pairs, shard))
        });
    }
}

#[test]
fn suites() {
    for input in inputs("config_yaml") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::copy(&input, &path).unwrap();
        check(&input, &path, || {
            Suite::load(&path).map_err(|e| e.to_string())
        });
    }
}
