//! Helpers for the end-to-end test in the repository's `tests/` folder: where the workspace's
//! binaries are, and reading the JSON files stages write.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
// Test support: a failure here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder of the workspace binaries the running test was built with (`target/<profile>`):
/// `cargo test --workspace` builds every stage's binary there.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/pipeline-HASH -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps")
        .to_path_buf()
}

/// The path of binary `name`, failing with advice when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries (cargo build --workspace, or run the tests with cargo test --workspace)",
        path.display()
    );
    path
}

/// A JSON file's contents.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}
