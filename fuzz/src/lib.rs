//! What the fuzz targets share: a scratch folder per process under `/dev/shm` (the readers
//! take paths), and the check that an error names the file it is about.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `/dev/shm/fmn-fuzz-{pid}` (else the system temp folder), made on first use; the folders of
/// earlier fuzzing processes that are gone are removed then.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = name.strip_prefix("fmn-fuzz-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = root.join(format!("fmn-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// A fresh, empty folder `name` in the scratch folder.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch sub-folder");
    dir
}

/// Writes `data` to `rel` in the scratch folder and returns its path.
pub fn write(rel: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch sub-folder");
    }
    std::fs::write(&path, data).expect("scratch file");
    path
}

/// Panics (a finding) unless the error message names `path`.
pub fn names_file(err: &str, path: &Path) {
    let p = path.display().to_string();
    assert!(
        err.contains(&p),
        "the error does not name the file {p}: {err}"
    );
}
