//! Rendered image sets on disk: `NNNNN.png`, `NNNNN.txt` (caption), `masks/NNNNN.png` and
//! `manifest.json`, written atomically (staged in a hidden folder, committed at the end).
use crate::caption::caption;
use crate::render::render;
use crate::scene::{Concept, Scene, SceneSpec, IMAGE_SIZE};
use crate::scene_rng;
use anyhow::{bail, Context, Result};
use fmn_core::StagingDir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";
pub const MASKS: &str = "masks";
pub const MANIFEST_KIND: &str = "fmn-toy render";

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
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a fmn-toy manifest", path.display()))
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
        bail!("--count must be at least 1");
    }
    if out.exists() {
        if !out.is_dir() {
            bail!("{}: exists and is not a folder", out.display());
        }
        let mut entries =
            fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "{}: folder is not empty; give a new or empty folder",
                out.display()
            );
        }
    }
    let spec = only.map_or_else(SceneSpec::default, SceneSpec::only);
    let staging = StagingDir::new(out)
        .with_context(|| format!("cannot create a staging folder for {}", out.display()))?;
    let dir = staging.path().to_path_buf();
    fs::create_dir(dir.join(MASKS))
        .with_context(|| format!("cannot create {}", dir.join(MASKS).display()))?;
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
        let save = |rel: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
            let path = dir.join(rel);
            f(&path).with_context(|| format!("cannot write {}", path.display()))
        };
        save(&entry.file, &|p| Ok(image.save(p)?))?;
        save(&entry.mask, &|p| Ok(mask.save(p)?))?;
        save(&entry.caption_file, &|p| Ok(fs::write(p, &entry.caption)?))?;
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
    fmn_core::write_json_atomic(&dir.join(MANIFEST), &manifest)?;
    staging
        .commit(&[MANIFEST])
        .with_context(|| format!("cannot move the rendered files into {}", out.display()))?;
    Ok(manifest)
}
