//! `kind: classifier`: class scores `[N, C]`, one per label; attributes `label` (the top
//! label) and `group` (the first group holding it), both unsure below `min_confidence`.
use super::preset::{check_groups, read_labels, ClassifierPreset};
use crate::Judgement;
use anyhow::{bail, Result};
use fmn_onnx::{ImageModel, PerImage};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) struct Classifier {
    pub labels: Vec<String>,
    softmax: bool,
    min_confidence: f32,
    groups: BTreeMap<String, Vec<String>>,
}

impl Classifier {
    /// Reads the labels and checks the groups and the model's declared output against them.
    pub fn load(file: &Path, p: &ClassifierPreset, model: &ImageModel) -> Result<Classifier> {
        let labels = read_labels(file, &p.labels)?;
        check_groups(file, &p.labels, &labels, &p.groups)?;
        if let Some(s) = &model.output().shape {
            let n = labels.len() as i64;
            if s.len() != 2 || (s[1] >= 0 && s[1] != n) {
                bail!(
                    "judge preset {}: output `{}` has shape {s:?}; expected [N, {n}] for the {n} \
                     labels of {}",
                    file.display(),
                    model.output().name,
                    p.labels.display()
                );
            }
        }
        Ok(Classifier {
            labels,
            softmax: p.softmax,
            min_confidence: p.min_confidence,
            groups: p.groups.clone(),
        })
    }

    /// Class probabilities, one row per image.
    pub fn probabilities(&self, output: &str, out: PerImage) -> Result<Vec<Vec<f32>>> {
        let n = self.labels.len();
        if let Some(shape) = out.shape.as_ref().filter(|s| s[..] != [n]) {
            bail!("output `{output}` gives {shape:?} per image; expected [{n}] for {n} labels");
        }
        Ok(out
            .rows
            .into_iter()
            .map(|row| if self.softmax { softmax(&row) } else { row })
            .collect())
    }

    /// Checks `label` and `group` values.
    pub fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in expect {
            match k.as_str() {
                "label" if !self.labels.contains(v) => {
                    return Err(format!("`label: {v}` is not one of the judge's labels"))
                }
                "group" if !self.groups.contains_key(v) => {
                    return Err(format!(
                        "`group: {v}` is not a group of the judge preset (groups: {})",
                        self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }
                "label" | "group" => {}
                _ => {
                    return Err(format!(
                        "the onnx judge has no attribute `{k}` (it knows label, group)"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The verdict on one image's probabilities.
    pub fn judgement(&self, probs: &[f32]) -> Judgement {
        let (best, p) = probs
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &p)| {
                    if p > acc.1 {
                        (i, p)
                    } else {
                        acc
                    }
                },
            );
        let label = &self.labels[best.min(self.labels.len() - 1)];
        let sure = p >= self.min_confidence;
        let group = self
            .groups
            .iter()
            .find(|(_, m)| m.contains(label))
            .map(|(g, _)| g.clone());
        Judgement {
            labels: BTreeMap::from([
                ("label".to_string(), sure.then(|| label.clone())),
                ("group".to_string(), if sure { group } else { None }),
            ]),
            description: format!("{label} ({p:.2})"),
        }
    }
}

/// Softmax of one row of logits.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}
