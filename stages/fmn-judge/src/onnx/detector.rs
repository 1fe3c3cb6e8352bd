//! `kind: detector`: YOLOv8-style boxes (NudeNet 3.x), decoded, thresholded and thinned by
//! class-agnostic NMS ([`super::decode`]), and the verdicts read from the kept boxes.
use super::decode::{Decoding, Detection};
use super::preset::{check_groups, read_labels, DetectorPreset, Layout, Nms};
use crate::Judgement;
use anyhow::{bail, Result};
use fmn_onnx::{ImageModel, PerImage};
use std::collections::BTreeMap;
use std::path::Path;

/// The prefix of the per-label and per-group yes/no attributes.
pub const DETECTED: &str = "detected:";

pub(super) struct Detector {
    pub labels: Vec<String>,
    decoding: Decoding,
    groups: BTreeMap<String, Vec<String>>,
}

impl Detector {
    /// Reads the labels, checks the groups, the names and the model's declared output.
    pub fn load(file: &Path, p: &DetectorPreset, model: &ImageModel) -> Result<Detector> {
        let labels = read_labels(file, &p.labels)?;
        check_groups(file, &p.labels, &labels, &p.groups)?;
        check_names(file, &labels, &p.groups)?;
        let d = Detector {
            decoding: Decoding::new(p, labels.len(), model.spec().size),
            labels,
            groups: p.groups.clone(),
        };
        if let Some(s) = &model.output().shape {
            let dims: Vec<usize> = s.iter().skip(1).map(|&d| d.max(0) as usize).collect();
            let known: Vec<bool> = s.iter().skip(1).map(|&d| d >= 0).collect();
            if s.len() != 3 || d.anchors(&dims, &known).is_none() {
                bail!(
                    "judge preset {}: {}",
                    file.display(),
                    d.shape_error(&model.output().name, s, &p.labels)
                );
            }
        }
        Ok(d)
    }

    /// The anchor count of a per-image output shape, when it fits the labels and layout
    /// (`known[i]`: whether axis `i` is known; an unknown axis fits).
    fn anchors(&self, shape: &[usize], known: &[bool]) -> Option<usize> {
        let features = 4 + self.labels.len();
        let (f, a) = match self.decoding.layout {
            Layout::ChannelsFirst => (0, 1),
            Layout::AnchorsFirst => (1, 0),
        };
        if shape.len() != 2 || known.len() != 2 {
            return None;
        }
        (!known[f] || shape[f] == features).then(|| shape[a])
    }

    fn shape_error(&self, output: &str, shape: &[i64], labels: &Path) -> String {
        let c = self.labels.len();
        let want = match self.decoding.layout {
            Layout::ChannelsFirst => format!("[N, {}, A]", 4 + c),
            Layout::AnchorsFirst => format!("[N, A, {}]", 4 + c),
        };
        let layout = match self.decoding.layout {
            Layout::ChannelsFirst => "channels_first",
            Layout::AnchorsFirst => "anchors_first",
        };
        format!(
            "output `{output}` has shape {shape:?}, but a detector (layout: {layout}) with the \
             {c} labels of {} needs {want}: 4 box values (cx, cy, w, h) and {c} class scores \
             per anchor",
            labels.display()
        )
    }

    /// The kept detections of each image, best first.
    pub fn detections(
        &self,
        output: &str,
        labels: &Path,
        out: PerImage,
    ) -> Result<Vec<Vec<Detection>>> {
        let Some(shape) = out.shape else {
            return Ok(Vec::new());
        };
        let anchors = self.anchors(&shape, &[true, true]).ok_or_else(|| {
            let full: Vec<i64> = std::iter::once(out.rows.len() as i64)
                .chain(shape.iter().map(|&d| d as i64))
                .collect();
            anyhow::anyhow!(self.shape_error(output, &full, labels))
        })?;
        if out.geometry.len() != out.rows.len() {
            bail!(
                "the detector got {} outputs for {} images",
                out.rows.len(),
                out.geometry.len()
            );
        }
        out.rows
            .iter()
            .zip(&out.geometry)
            .map(|(row, g)| {
                self.decoding
                    .detections(row, anchors, g, &self.labels)
                    .map_err(|e| anyhow::anyhow!("detector output: {e}"))
            })
            .collect()
    }

    /// Checks `label`, `group` and `detected:NAME` keys and values.
    pub fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        let groups = || {
            let mut g: Vec<&str> = self.groups.keys().map(String::as_str).collect();
            g.push("none");
            g.join(", ")
        };
        for (k, v) in expect {
            if let Some(name) = k.strip_prefix(DETECTED) {
                if !self.labels.contains(&name.to_string()) && !self.groups.contains_key(name) {
                    return Err(format!(
                        "`{k}`: `{name}` is neither a label nor a group of the detector preset \
                         (groups: {})",
                        groups()
                    ));
                }
                if !["yes", "no"].iter().any(|w| w.eq_ignore_ascii_case(v)) {
                    return Err(format!("`{k}: {v}`: expected yes or no"));
                }
                continue;
            }
            match k.as_str() {
                "label" if v != "none" && !self.labels.contains(v) => {
                    return Err(format!(
                        "`label: {v}` is not one of the judge's labels (nor none)"
                    ))
                }
                "group" if v != "none" && !self.groups.contains_key(v) => {
                    return Err(format!(
                        "`group: {v}` is not a group of the judge preset (groups: {})",
                        groups()
                    ))
                }
                "label" | "group" => {}
                _ => {
                    return Err(format!(
                        "the onnx detector judge has no attribute `{k}` (it knows label, \
                         group, {DETECTED}LABEL, {DETECTED}GROUP)"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The verdict on one image's kept detections (best first).
    pub fn judgement(&self, dets: &[Detection]) -> Judgement {
        let none = || Some("none".to_string());
        let group_of = |label: &str| {
            self.groups
                .iter()
                .find(|(_, m)| m.iter().any(|l| l == label))
                .map(|(g, _)| g.clone())
        };
        let mut labels = BTreeMap::from([
            (
                "label".to_string(),
                dets.first().map(|d| d.label.clone()).or_else(none),
            ),
            (
                "group".to_string(),
                dets.iter().find_map(|d| group_of(&d.label)).or_else(none),
            ),
        ]);
        let yes_no = |b: bool| Some(if b { "yes" } else { "no" }.to_string());
        for l in &self.labels {
            let seen = dets.iter().any(|d| &d.label == l);
            labels.insert(format!("{DETECTED}{l}"), yes_no(seen));
        }
        for (g, members) in &self.groups {
            let seen = dets.iter().any(|d| members.contains(&d.label));
            labels.insert(format!("{DETECTED}{g}"), yes_no(seen));
        }
        Judgement {
            labels,
            description: self.describe(dets),
        }
    }

    fn describe(&self, dets: &[Detection]) -> String {
        if dets.is_empty() {
            let t = self.decoding.score_threshold;
            return match self.decoding.nms {
                Nms::Greedy => format!("nothing detected (scores < {t})"),
                Nms::Opencv => format!("nothing detected (scores ≤ {t})"),
            };
        }
        let mut s: Vec<String> = dets
            .iter()
            .take(3)
            .map(|d| format!("{} ({:.2})", d.label, d.score))
            .collect();
        if dets.len() > 3 {
            s.push(format!("+{} more", dets.len() - 3));
        }
        s.join(", ")
    }
}

/// `none` means nothing was detected, and a `detected:NAME` must name one label or group.
fn check_names(
    file: &Path,
    labels: &[String],
    groups: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    if labels.iter().any(|l| l == "none") || groups.contains_key("none") {
        bail!(
            "judge preset {}: `none` cannot be a label or group of a detector (it means nothing \
             was detected)",
            file.display()
        );
    }
    if let Some(g) = groups.keys().find(|g| labels.contains(g)) {
        bail!(
            "judge preset {}: group `{g}` has the name of a label; `{DETECTED}{g}` would be \
             ambiguous",
            file.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(labels: usize, layout: Layout) -> Detector {
        Detector {
            labels: (0..labels).map(|i| format!("l{i}")).collect(),
            decoding: Decoding {
                classes: labels,
                layout,
                prefilter_threshold: 0.5,
                score_threshold: 0.5,
                iou_threshold: Some(0.5),
                nms: Nms::Greedy,
                input_size: [8, 8],
            },
            groups: BTreeMap::new(),
        }
    }

    /// A model whose output shape is only known when it runs is checked then.
    #[test]
    fn an_output_that_does_not_fit_is_named_when_it_runs() {
        let geometry = fmn_onnx::Geometry {
            width: 8,
            height: 8,
            placement: fmn_onnx::Placement::Stretch,
        };
        let out = |shape: Vec<usize>| PerImage {
            rows: vec![vec![0.0; shape.iter().product()]; 2],
            shape: Some(shape),
            geometry: vec![geometry; 2],
        };
        let labels = Path::new("labels.txt");
        let d = detector(4, Layout::AnchorsFirst);
        let err = d
            .detections("out", labels, out(vec![16, 7]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 16, 7]"), "{err}");
        assert!(err.contains("needs [N, A, 8]"), "{err}");
        assert!(err.contains("labels.txt"), "{err}");
        let d = detector(3, Layout::ChannelsFirst);
        let err = d
            .detections("out", labels, out(vec![16, 7]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs [N, 7, A]"), "{err}");
        let err = d
            .detections("out", labels, out(vec![7]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 7]"), "{err}");
        let ok = d.detections("out", labels, out(vec![7, 16])).unwrap();
        assert_eq!(ok, vec![Vec::new(), Vec::new()]);
    }
}
