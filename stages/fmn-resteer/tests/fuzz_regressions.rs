//! The YAML inputs the `config_yaml` fuzz target of `fuzz/` kept (docs/fuzzing.md,
//! `fuzz/regressions/config_yaml/`), read as re-steering settings: `fmn_core::merge_valid` and
//! `fmn_core::load_yaml` must answer without panicking; `merge_valid` refuses each (they are
//! kept for their error paths), and every error names the file.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_resteer::ResteerConfig;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn config_files() {
    let dir = fmn_testkit::fixtures().join("../../fuzz/regressions/config_yaml");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    for input in inputs {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.yaml");
        std::fs::copy(&input, &path).unwrap();
        let named = path.display().to_string();
        let (merged, loaded) = catch_unwind(AssertUnwindSafe(|| {
            (
                fmn_core::merge_valid::<ResteerConfig>(Some(&path), &()),
                fmn_core::load_yaml::<ResteerConfig>(&path),
            )
        }))
        .unwrap_or_else(|_| panic!("{} made the config reader panic", input.display()));
        let merged = merged
            .err()
            .unwrap_or_else(|| panic!("{} was read, but should be refused", input.display()));
        for e in std::iter::once(merged).chain(loaded.err()) {
            assert!(
                e.to_string().contains(&named),
                "{}: the error does not name the file: {e}",
                input.display()
            );
        }
    }
}
