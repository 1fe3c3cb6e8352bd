#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_core::{load_yaml, write_atomic, StagingDir};
use std::io::Write;

#[test]
fn failed_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.bin");
    let err = write_atomic(&target, |f| {
        f.write_all(b"half")?;
        Err(std::io::Error::other("interrupted"))
    });
    assert!(err.is_err());
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp file left behind"
    );
}

#[test]
fn successful_write_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("a.txt");
    std::fs::write(&target, "old").unwrap();
    write_atomic(&target, |f| f.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
}

#[test]
fn staging_dir_moves_files_on_commit_and_cleans_up_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("my out");
    {
        let staging = StagingDir::new(&out).unwrap();
        std::fs::write(staging.path().join("x.png"), "x").unwrap();
        // dropped without commit
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let staging = StagingDir::new(&out).unwrap();
    std::fs::write(staging.path().join("x.png"), "x").unwrap();
    std::fs::write(staging.path().join("manifest.json"), "{}").unwrap();
    staging.commit(&["manifest.json"]).unwrap();
    assert!(out.join("x.png").is_file() && out.join("manifest.json").is_file());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Settings {
    steps: usize,
}

#[test]
fn unknown_yaml_key_is_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "steps: 3\nstpes: 4\n").unwrap();
    let msg = load_yaml::<Settings>(&path).unwrap_err().to_string();
    assert!(msg.contains("stpes") && msg.contains("c.yaml"), "{msg}");
}

/// Outputs get what a plain `File::create` / `create_dir` gives here (the umask's), not the
/// temporary file's private 0600 / 0700.
#[cfg(unix)]
#[test]
fn outputs_get_the_permissions_of_a_plain_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    std::fs::write(dir.path().join("plain.txt"), "x").unwrap();
    std::fs::create_dir(dir.path().join("plain-dir")).unwrap();
    write_atomic(&dir.path().join("a.txt"), |f| f.write_all(b"a")).unwrap();
    assert_eq!(
        mode(&dir.path().join("a.txt")),
        mode(&dir.path().join("plain.txt"))
    );
    let staging = StagingDir::new(&dir.path().join("out")).unwrap();
    std::fs::write(staging.path().join("b.txt"), "b").unwrap();
    staging.commit_replace().unwrap();
    assert_eq!(
        mode(&dir.path().join("out")),
        mode(&dir.path().join("plain-dir"))
    );
}
