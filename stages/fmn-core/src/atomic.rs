//! Outputs appear whole or not at all: files are written to a temporary sibling and renamed.
use crate::lock::OutputLock;
use serde::Serialize;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The last part of an output's path (`out` when it has none), for the hidden files and
/// folders made beside it.
pub(crate) fn output_name(out: &Path) -> String {
    out.file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned())
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Asks `builder` for what `open`/`mkdir` would give a new file or folder: `mode` less the
/// process's umask (tempfile's own 0600 / 0700 would make every output private).
fn plain_mode<'a, 'b>(
    builder: &'b mut tempfile::Builder<'a, 'a>,
    mode: u32,
) -> &'b mut tempfile::Builder<'a, 'a> {
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    let _ = mode;
    builder
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes `path` through `fill`, first into a temporary file in the same folder, then renamed
/// over `path`; on any error nothing appears at `path`.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    let mut tmp = plain_mode(
        tempfile::Builder::new().prefix(".fmn-").suffix(".tmp"),
        0o666,
    )
    .tempfile_in(dir)
    .map_err(|e| with_path(dir, e))?;
    fill(tmp.as_file_mut()).map_err(|e| with_path(path, e))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all().map_err(|e| with_path(path, e))?;
    tmp.persist(path).map_err(|e| with_path(path, e.error))?;
    Ok(())
}

/// Writes `value` as pretty JSON (with a trailing newline) atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, |f| {
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")
    })
}

/// A hidden temporary folder beside an output folder: a stage writes its files there and
/// [`StagingDir::commit`] moves them into the output folder, the manifest last. If the stage
/// fails (or is killed), the output folder never holds a partial result; a dropped,
/// uncommitted staging folder is removed. The output stays locked ([`OutputLock`]) from
/// `new` until the staging folder is committed or dropped.
pub struct StagingDir {
    tmp: tempfile::TempDir,
    out: PathBuf,
    _lock: OutputLock,
}

impl StagingDir {
    /// A staging folder for `out`; fails if another process is writing `out`.
    pub fn new(out: &Path) -> io::Result<Self> {
        let lock = OutputLock::acquire(out).map_err(io::Error::other)?;
        let parent = parent_of(out);
        fs::create_dir_all(parent).map_err(|e| with_path(parent, e))?;
        let prefix = format!(".{}.partial-", output_name(out));
        let tmp = plain_mode(tempfile::Builder::new().prefix(&prefix), 0o777)
            .tempdir_in(parent)
            .map_err(|e| with_path(parent, e))?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            _lock: lock,
        })
    }

    /// Where to write the files now.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The final output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Moves every staged file into the output folder (created if needed), files named in
    /// `last` after all others, replacing files of the same name.
    pub fn commit(self, last: &[&str]) -> io::Result<PathBuf> {
        let tmp = self.tmp;
        fs::create_dir_all(&self.out).map_err(|e| with_path(&self.out, e))?;
        let mut entries: Vec<PathBuf> = fs::read_dir(tmp.path())?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        entries.sort_by_key(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (
                last.iter().position(|l| *l == name).map_or(0, |i| i + 1),
                name,
            )
        });
        for src in entries {
            let dst = self.out.join(src.file_name().unwrap_or_default());
            fs::rename(&src, &dst).map_err(|e| with_path(&dst, e))?;
        }
        Ok(self.out.clone())
    }

    /// Replaces the whole output folder with the staged one (for outputs that are folders of
    /// folders, such as a model): the old folder, if any, is moved aside and deleted only after
    /// the new one is in place.
    pub fn commit_replace(self) -> io::Result<PathBuf> {
        let tmp = self.tmp;
        let staged = tmp.keep();
        let mut old = None;
        if self.out.exists() {
            let aside = staged.with_extension("old");
            fs::rename(&self.out, &aside).map_err(|e| with_path(&self.out, e))?;
            old = Some(aside);
        }
        if let Err(e) = fs::rename(&staged, &self.out) {
            if let Some(aside) = &old {
                let _ = fs::rename(aside, &self.out);
            }
            return Err(with_path(&self.out, e));
        }
        if let Some(aside) = old {
            fs::remove_dir_all(&aside).map_err(|e| with_path(&aside, e))?;
        }
        Ok(self.out.clone())
    }
}
