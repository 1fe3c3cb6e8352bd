#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
//! `merge_valid` on settings that flatten a shared group of keys.
use fmn_core::{merge_valid, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Shared {
    beta: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Settings {
    steps: usize,
    #[serde(flatten)]
    shared: Shared,
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Serialize)]
struct Flags {
    steps: Option<usize>,
}

fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn flattened_keys_are_read_and_flags_win() {
    let (_d, path) = file("steps: 3\nbeta: 0.5\n");
    let s: Settings = merge_valid(Some(&path), &Flags { steps: Some(7) }).unwrap();
    assert_eq!((s.steps, s.shared.beta), (7, 0.5));
    let s: Settings = merge_valid(Some(&path), &Flags { steps: None }).unwrap();
    assert_eq!((s.steps, s.shared.beta), (3, 0.5));
}

#[test]
fn unknown_keys_beside_a_flattened_group_are_refused_by_name() {
    let (_d, path) = file("steps: 3\nbetta: 0.5\nstpes: 1\n");
    let msg = merge_valid::<Settings>(Some(&path), &Flags { steps: None })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("c.yaml")
            && msg.contains("unknown keys `betta`, `stpes`")
            && msg.contains("the keys are: beta, steps"),
        "{msg}"
    );
}
