//! Rendered image sets on disk: `NNNNN.png`, `NNNNN.txt` (caption), `masks/NNNNN.png` and
//! `manifest.json`, written atomically (staged in a hidden folder, committed at the end).
use crate::caption::caption;
use crate::render::render;
use crate::scene::{Concept, Scene, SceneSpec, IMAGE_SIZE};
use crate::scene_rng;
use fmn_core::StagingDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";
pub const MASKS: &str = "masks";
pub const MANIFEST_KIND: &str = "fmn-toy render";

/// Why a set could not be rendered or its manifest read; each names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("--count must be at least 1")]
    ZeroCount,
    #[error("{0}: exists and is not a folder")]
    NotAFolder(PathBuf),
    #[error("{0}: folder is not empty; give a new or empty folder")]
    NotEmpty(PathBuf),
    /// `action` is what failed ("read", "write", "create a staging folder for", ...).
    #[error("cannot {action} {path}: {message}")]
    Io {
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{path}: not a fmn-toy manifest: {message}")]
    NotAManifest { path: PathBuf, message: String },
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// An error of `action` on `path`.
fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DatasetError + 'a {
    move |e| DatasetError::Io {
        action,
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `manifest.json` of a rendered set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub fmn_version: String,
    pub seed: u64,
    pub count: usize,
    /// The concept every image shows, if the set was restricted with `--only`.
    pub only: Option<Concept>,
    pub image_size: u32,
    pub images: Vec<ManifestEntry>,
}

/// One image of a set: its files (relative to the set's folder), caption and scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub file: String,
    pub caption_file: String,
    pub mask: String,
    pub caption: String,
    #[serde(flatten)]
    pub scene: Scene,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(io("read", &path))?;
        serde_json::from_str(&text).map_err(|e| DatasetError::NotAManifest {
            message: e.to_string(),
            path,
        })
    }
}

/// Image `index` of the set drawn with `seed` under `spec`: its scene and caption.
pub fn draw(seed: u64, index: u64, spec: &SceneSpec) -> (Scene, String) {
    let mut rng = scene_rng(seed, index);
    let scene = Scene::random(&mut rng, spec);
    let text = caption(&scene, &mut rng);
    (scene, text)
}

/// Renders `count` images drawn with `seed` (restricted to `only` if given) into `out`,
/// which must not exist or be an empty folder. `progress` is called after each image.
pub fn render_set(
    out: &Path,
    count: usize,
    seed: u64,
    only: Option<Concept>,
    mut progress: impl FnMut(usize),
) -> Result<Manifest> {
    if count == 0 {
        return Err(DatasetError::ZeroCount);
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(DatasetError::NotAFolder(out.to_path_buf()));
        }
        let mut entries = fs::read_dir(out).map_err(io("read", out))?;
        if entries.next().is_some() {
            return Err(DatasetError::NotEmpty(out.to_path_buf()));
        }
    }
    let spec = only.map_or_else(SceneSpec::default, SceneSpec::only);
    let staging = StagingDir::new(out).map_err(io("create a staging folder for", out))?;
    let dir = staging.path().to_path_buf();
    let masks = dir.join(MASKS);
    fs::create_dir(&masks).map_err(io("create", &masks))?;
    let width = 5.max(count.saturating_sub(1).to_string().len());
    let mut images = Vec::with_capacity(count);
    for i in 0..count {
        let (scene, text) = draw(seed, i as u64, &spec);
        let (image, mask) = render(&scene);
        let stem = format!("{i:0width$}");
        let entry = ManifestEntry {
            file: format!("{stem}.png"),
            caption_file: format!("{stem}.txt"),
            mask: format!("{MASKS}/{stem}.png"),
            caption: text,
            scene,
        };
        let save = |rel: &str, f: &dyn Fn(&Path) -> std::result::Result<(), String>| {
            let path = dir.join(rel);
            f(&path).map_err(|message| DatasetError::Io {
                action: "write",
                path,
                message,
            })
        };
        save(&entry.file, &|p| image.save(p).map_err(|e| e.to_string()))?;
        save(&entry.mask, &|p| mask.save(p).map_err(|e| e.to_string()))?;
        save(&entry.caption_file, &|p| {
            fs::write(p, &entry.caption).map_err(|e| e.to_string())
        })?;
        images.push(entry);
        progress(i + 1);
    }
    let manifest = Manifest {
        kind: MANIFEST_KIND.into(),
        fmn_version: crate::VERSION.into(),
        seed,
        count,
        only,
        image_size: IMAGE_SIZE,
        images,
    };
    let manifest_path = dir.join(MANIFEST);
    fmn_core::write_json_atomic(&manifest_path, &manifest).map_err(io("write", &manifest_path))?;
    staging
        .commit(&[MANIFEST])
        .map_err(io("move the rendered files into", out))?;
    Ok(manifest)
}
