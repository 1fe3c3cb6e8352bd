//! The output lock: held by another process (util-linux's `flock`, which takes the same
//! `flock(2)` lock) it refuses naming the output, the lock file and the holder; a holder
//! killed with SIGKILL leaves a file but no lock; within one process the lock is counted.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_core::lock::lock_path;
use fmn_core::{LockError, OutputLock};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// `flock` holding `lock` (in a process group of its own with the shell it starts) until
/// [`kill`]ed, once it says so.
fn hold_elsewhere(lock: &std::path::Path) -> Child {
    let mut child = Command::new("flock")
        .process_group(0)
        // -o: the command it starts does not hold the lock, so that the lock is gone once
        // `flock` itself has been reaped.
        .args(["-x", "-o"])
        .arg(lock)
        .args(["-c", "echo locked; exec sleep 60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux flock");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

/// SIGKILL to the holder's whole process group.
fn kill(mut holder: Child) {
    let group = i32::try_from(holder.id()).unwrap();
    // SAFETY: a plain kill(2) of the process group this test started.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGKILL) }, 0);
    holder.wait().unwrap();
}

#[test]
fn a_lock_held_by_another_process_is_refused_and_a_killed_holder_frees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs/patch.safetensors");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let lock = lock_path(&out);
    assert_eq!(lock, tmp.path().join("runs/.patch.safetensors.lock"));
    std::fs::write(&lock, "4242").unwrap();
    let holder = hold_elsewhere(&lock);
    let err = OutputLock::acquire(&out).unwrap_err();
    assert!(
        matches!(
            err,
            LockError::Busy {
                holder: Some(4242),
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&out.display().to_string())
            && msg.contains("another process (pid 4242)")
            && msg.contains(".patch.safetensors.lock"),
        "{msg}"
    );
    // SIGKILL: the OS drops the lock, the file stays; the next run takes it.
    kill(holder);
    assert!(lock.exists());
    let held = OutputLock::acquire(&out).unwrap();
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        std::process::id().to_string()
    );
    drop(held);
    assert!(!lock.exists(), "the lock file is removed with its holder");
}

#[test]
fn one_process_may_lock_an_output_again_and_the_last_holder_releases_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let lock = lock_path(&out);
    let a = OutputLock::acquire(&out).unwrap();
    // The same output through another spelling of its folder.
    let b = OutputLock::acquire(&tmp.path().join("./model")).unwrap();
    assert_eq!(a.path(), b.path());
    drop(a);
    assert!(lock.exists(), "still held by the second holder");
    drop(b);
    assert!(!lock.exists());
    // Free again: another process can take it.
    let holder = hold_elsewhere(&lock);
    assert!(matches!(
        OutputLock::acquire(&out),
        Err(LockError::Busy { .. })
    ));
    kill(holder);
}

#[test]
fn a_staging_folder_holds_the_lock_until_it_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("samples");
    let staging = fmn_core::StagingDir::new(&out).unwrap();
    assert!(lock_path(&out).exists());
    std::fs::write(staging.path().join("a.txt"), "a").unwrap();
    staging.commit(&[]).unwrap();
    assert!(!lock_path(&out).exists());
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a");
}
