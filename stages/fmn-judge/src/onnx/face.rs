//! `kind: face`: an embedding `[N, D]` per image, compared by cosine similarity with the
//! embeddings of each identity's reference images (computed once, at load).
use super::preset::FacePreset;
use crate::Judgement;
use anyhow::{bail, Context, Result};
use fmn_onnx::{ImageModel, PerImage};
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An identity's name and its reference images' L2-normalised embeddings.
pub type IdentityReferences<'a> = (&'a str, &'a [Vec<f32>]);

/// `v / |v|`, or `None` when `v` has no direction (zero or not finite).
pub fn l2_normalise(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The image files of a references folder (`fmn_core::images`), sorted by name.
pub fn reference_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let (files, _) = fmn_core::images::list_images(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?;
    if files.is_empty() {
        bail!(
            "folder {} holds no {} images",
            dir.display(),
            fmn_core::images::IMAGE_EXTENSIONS.join("/")
        );
    }
    Ok(files)
}

pub(super) struct Face {
    /// Identity names, in the order of `references`.
    pub identities: Vec<String>,
    /// Per identity, its reference images' L2-normalised embeddings.
    pub references: Vec<Vec<Vec<f32>>>,
    threshold: f32,
    dim: usize,
}

impl Face {
    /// Embeds every identity's reference images; errors name the preset and the folder or
    /// image that fails.
    pub fn load(file: &Path, p: &FacePreset, model: &ImageModel) -> Result<Face> {
        if let Some(s) = model.output().shape.as_ref().filter(|s| s.len() != 2) {
            bail!(
                "judge preset {}: output `{}` has shape {s:?}; a face judge needs an \
                 embedding [N, D]",
                file.display(),
                model.output().name
            );
        }
        let mut face = Face {
            identities: Vec::new(),
            references: Vec::new(),
            threshold: p.threshold,
            dim: 0,
        };
        for (name, dir) in &p.references {
            let refs = face.embed_references(model, dir).with_context(|| {
                format!(
                    "judge preset {}: references of identity `{name}` ({})",
                    file.display(),
                    dir.display()
                )
            })?;
            face.identities.push(name.clone());
            face.references.push(refs);
        }
        Ok(face)
    }

    fn embed_references(&mut self, model: &ImageModel, dir: &Path) -> Result<Vec<Vec<f32>>> {
        let files = reference_files(dir)?;
        let images = files
            .iter()
            .map(|f| {
                image::open(f)
                    .map(|i| i.to_rgb8())
                    .with_context(|| format!("cannot read image {}", f.display()))
            })
            .collect::<Result<Vec<RgbImage>>>()?;
        let out = super::run(model, &images)?;
        if self.dim == 0 {
            self.dim = match out.shape.as_deref() {
                Some(&[d]) if d > 0 => d,
                s => bail!(
                    "output `{}` gives {s:?} per image; a face judge needs an embedding [N, D]",
                    model.output().name
                ),
            };
        }
        let rows = self.embeddings(&model.output().name, out)?;
        rows.iter()
            .zip(&files)
            .map(|(e, f)| {
                l2_normalise(e).with_context(|| {
                    format!("the embedding of {} is zero or not finite", f.display())
                })
            })
            .collect()
    }

    /// The raw embeddings, one per image; checks they have the references' dimension.
    pub fn embeddings(&self, output: &str, out: PerImage) -> Result<Vec<Vec<f32>>> {
        if let Some(s) = out.shape.as_ref().filter(|s| s[..] != [self.dim]) {
            bail!(
                "output `{output}` gives {s:?} per image; expected the embedding [{}] of the \
                 reference images",
                self.dim
            );
        }
        Ok(out.rows)
    }

    /// Per image, per identity: the highest cosine similarity to its reference images (0 for
    /// an embedding without direction).
    pub fn similarities(&self, embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
        embeddings
            .iter()
            .map(|e| {
                let e = l2_normalise(e);
                self.references
                    .iter()
                    .map(|refs| match &e {
                        Some(e) => refs
                            .iter()
                            .map(|r| dot(e, r))
                            .fold(f32::NEG_INFINITY, f32::max),
                        None => 0.0,
                    })
                    .collect()
            })
            .collect()
    }

    /// Checks `identity` values.
    pub fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in expect {
            if k != "identity" {
                return Err(format!(
                    "the onnx face judge has no attribute `{k}` (it knows identity)"
                ));
            }
            if v != "none" && !self.identities.contains(v) {
                return Err(format!(
                    "`identity: {v}` is not an identity of the judge preset (identities: {}, none)",
                    self.identities.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The verdict on one image's similarities.
    pub fn judgement(&self, sims: &[f32]) -> Judgement {
        let best =
            sims.iter()
                .enumerate()
                .fold(None, |acc: Option<(usize, f32)>, (i, &s)| match acc {
                    Some((_, b)) if b >= s => acc,
                    _ if s.is_nan() => acc,
                    _ => Some((i, s)),
                });
        let (identity, description) = match best {
            Some((i, s)) if s >= self.threshold => {
                let name = &self.identities[i];
                (name.clone(), format!("{name} (cos {s:.2})"))
            }
            Some((i, s)) => (
                "none".to_string(),
                format!("none (best {}, cos {s:.2})", self.identities[i]),
            ),
            None => ("none".to_string(), "none".to_string()),
        };
        Judgement {
            labels: BTreeMap::from([("identity".to_string(), Some(identity))]),
            description,
        }
    }
}
