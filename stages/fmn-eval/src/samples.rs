//! Reading `fmn-sample` output folders and pairing their images by (prompt, seed).
use anyhow::{bail, Context, Result};
use fmn_core::Shard;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parts of an `fmn-sample` manifest that evaluation reads (other keys are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct SampleManifest {
    #[serde(default)]
    pub model: String,
    pub prompts: Vec<String>,
    pub images: Vec<SampleImage>,
    #[serde(default)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SampleImage {
    pub file: String,
    pub prompt: String,
    pub image_index: usize,
    pub seed: Option<u64>,
}

/// A sample folder: its manifest, and where it lives.
#[derive(Debug, Clone)]
pub struct SampleDir {
    pub dir: PathBuf,
    pub manifest: SampleManifest,
}

impl SampleDir {
    pub fn load(dir: &Path, what: &str) -> Result<SampleDir> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "--{what} {}: cannot read manifest.json (is it an fmn-sample output folder?)",
                dir.display()
            )
        })?;
        let manifest: SampleManifest = serde_json::from_str(&text)
            .with_context(|| format!("--{what} {}: bad manifest", path.display()))?;
        // `Shard` deserialises any two numbers; slicing by shard N = 0 divides by zero.
        if let Some(s) = manifest.shard {
            if s.count == 0 || s.index >= s.count {
                bail!(
                    "--{what} {}: bad manifest: `shard` is {{\"index\": {}, \"count\": {}}}, expected 0 <= index < count",
                    path.display(),
                    s.index,
                    s.count
                );
            }
        }
        Ok(SampleDir {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The row of each image in the folder's attention file (manifest order).
    fn index(&self) -> BTreeMap<Key, usize> {
        self.manifest
            .images
            .iter()
            .enumerate()
            .map(|(i, im)| (Key::of(im), i))
            .collect()
    }
}

/// What pairs a before image with an after image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub prompt: String,
    pub seed: Option<u64>,
    pub image_index: usize,
}

impl Key {
    fn of(im: &SampleImage) -> Key {
        Key {
            prompt: im.prompt.clone(),
            seed: im.seed,
            image_index: im.image_index,
        }
    }

    pub fn describe(&self) -> String {
        match self.seed {
            Some(s) => format!("\"{}\" seed {s}", self.prompt),
            None => format!("\"{}\" image {}", self.prompt, self.image_index),
        }
    }
}

/// One before/after image pair.
#[derive(Debug, Clone)]
pub struct Pair {
    pub key: Key,
    pub before_file: PathBuf,
    pub after_file: PathBuf,
    /// Rows in the folders' attention files.
    pub before_row: usize,
    pub after_row: usize,
}

/// Pairs the images of two folders; every image of either must have a partner.
pub fn pair(before: &SampleDir, after: &SampleDir) -> Result<Vec<Pair>> {
    let b = before.index();
    let a = after.index();
    if let Some(k) = b.keys().find(|k| !a.contains_key(*k)) {
        bail!(
            "the before and after folders do not pair up: {} is in {} but not in {}",
            k.describe(),
            before.dir.display(),
            after.dir.display()
        );
    }
    if let Some(k) = a.keys().find(|k| !b.contains_key(*k)) {
        bail!(
            "the before and after folders do not pair up: {} is in {} but not in {}",
            k.describe(),
            after.dir.display(),
            before.dir.display()
        );
    }
    Ok(before
        .manifest
        .images
        .iter()
        .map(|im| {
            let key = Key::of(im);
            let after_row = a[&key];
            Pair {
                before_file: before.dir.join(&im.file),
                after_file: after.dir.join(&after.manifest.images[after_row].file),
                before_row: b[&key],
                after_row,
                key,
            }
        })
        .collect())
}

/// The pairs of this shard: pairs sorted by key, then every N-th from I.
pub fn shard_pairs(mut pairs: Vec<Pair>, shard: Shard) -> Vec<Pair> {
    pairs.sort_by(|x, y| x.key.cmp(&y.key));
    shard.slice(&pairs)
}
