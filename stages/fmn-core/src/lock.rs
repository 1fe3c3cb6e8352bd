//! One writer per output: a stage holds an exclusive lock on its output for the whole run, so
//! that a second process given the same `--out` fails at once with a clear message instead of
//! interleaving its files (or its checkpoints) with the first one's.
//!
//! The lock is an OS advisory lock (`flock`) on a hidden sibling file `.{name}.lock`: the OS
//! releases it when the process ends, `kill -9` included, so a crash never leaves a stale lock
//! behind. Within one process the same output may be locked again (a stage that locks its run
//! and then stages its files): the lock is counted and released with its last holder.
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{}: another process{} is writing this output now (lock {}); wait for it to finish \
         or choose another output",
        out.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        lock.display()
    )]
    Busy {
        out: PathBuf,
        lock: PathBuf,
        holder: Option<u32>,
    },
    #[error("{}: cannot lock this output: {source}", out.display())]
    Io { out: PathBuf, source: io::Error },
}

/// The lock file of `out`: `.{name}.lock` in `out`'s folder.
pub fn lock_path(out: &Path) -> PathBuf {
    crate::atomic::parent_of(out).join(lock_name(out))
}

fn lock_name(out: &Path) -> String {
    format!(".{}.lock", crate::atomic::output_name(out))
}

/// Held for as long as the value lives; the lock file is removed with the last holder.
#[derive(Debug)]
pub struct OutputLock {
    held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    path: PathBuf,
    _file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Removed while still locked, so that no other process can lock the old file after us
        // (a process that opened it before the removal finds it unlinked and tries again).
        let _ = fs::remove_file(&self.path);
    }
}

/// The locks this process holds, by lock-file path.
fn held_here() -> &'static Mutex<HashMap<PathBuf, Weak<Held>>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, Weak<Held>>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

impl OutputLock {
    /// Locks `out` (a file or folder, which need not exist yet) for this process, or says who
    /// holds it. Creates `out`'s parent folder if needed.
    pub fn acquire(out: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            out: out.to_path_buf(),
            source,
        };
        let dir = crate::atomic::parent_of(out);
        fs::create_dir_all(dir).map_err(io_err)?;
        let path = fs::canonicalize(dir).map_err(io_err)?.join(lock_name(out));
        let mut here = held_here().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = here.get(&path).and_then(Weak::upgrade) {
            return Ok(Self { held });
        }
        let file = loop {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(LockError::Busy {
                        out: out.to_path_buf(),
                        lock: path,
                        holder: text.trim().parse().ok(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
            // The holder before us may have removed the file between our open and our lock:
            // then the lock is on a file nobody else will see, so take the one at the path.
            if same_file(&file, &path) {
                file.set_len(0).map_err(io_err)?;
                file.rewind().map_err(io_err)?;
                write!(file, "{}", std::process::id()).map_err(io_err)?;
                break file;
            }
        };
        let held = Arc::new(Held {
            path: path.clone(),
            _file: file,
        });
        here.insert(path, Arc::downgrade(&held));
        Ok(Self { held })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.held.path
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}
