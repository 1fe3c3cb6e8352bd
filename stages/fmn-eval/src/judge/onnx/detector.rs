//! `kind: detector`: YOLOv8-style boxes (NudeNet 3.x), decoded, thresholded and thinned by
//! greedy class-agnostic NMS, as NudeNet does.
use super::preset::{check_groups, read_labels, DetectorPreset, Layout};
use crate::judge::Judgement;
use anyhow::{bail, Result};
use fmn_onnx::{ImageModel, PerImage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The prefix of the per-label and per-group yes/no attributes.
pub const DETECTED: &str = "detected:";

/// One box the detector kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The label's index in the labels file.
    pub class: usize,
    pub label: String,
    /// The box's best class score.
    pub score: f32,
    /// `[x0, y0, x1, y1]` in model-input pixels.
    pub bbox: [f32; 4],
}

/// A box above the score threshold, before NMS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Where the box is in the output's anchor axis.
    pub anchor: usize,
    /// The class with the best score (the first one on ties).
    pub class: usize,
    pub score: f32,
    /// `[x0, y0, x1, y1]` from `cx, cy, w, h`.
    pub bbox: [f32; 4],
}

/// Decodes one image's output (`anchors` boxes of 4 + `classes` values, laid out as `layout`
/// says): every anchor whose best class score is at least `score_threshold`, best first
/// (ties keep anchor order). NaN scores never pass.
pub fn decode(
    row: &[f32],
    anchors: usize,
    classes: usize,
    layout: Layout,
    score_threshold: f32,
) -> Result<Vec<Candidate>, String> {
    let features = 4 + classes;
    if row.len() != anchors * features {
        return Err(format!(
            "{} output values for {anchors} anchors of {features} values",
            row.len()
        ));
    }
    let at = |a: usize, k: usize| match layout {
        Layout::ChannelsFirst => row[k * anchors + a],
        Layout::AnchorsFirst => row[a * features + k],
    };
    let mut out = Vec::new();
    for a in 0..anchors {
        let (class, score) =
            (0..classes)
                .map(|c| (c, at(a, 4 + c)))
                .fold((0, f32::NEG_INFINITY), |best, (c, s)| {
                    if s > best.1 {
                        (c, s)
                    } else {
                        best
                    }
                });
        if score >= score_threshold {
            let (cx, cy, w, h) = (at(a, 0), at(a, 1), at(a, 2), at(a, 3));
            let bbox = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
            out.push(Candidate {
                anchor: a,
                class,
                score,
                bbox,
            });
        }
    }
    out.sort_by(|x, y| y.score.total_cmp(&x.score));
    Ok(out)
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes (0 when both are empty).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression: going from the best score down, keeps a box unless it
/// overlaps an already kept one by IoU > `iou_threshold`. Returns the kept indices, best
/// first (ties keep index order).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let n = boxes.len().min(scores.len());
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if kept
            .iter()
            .all(|&k| iou(&boxes[k], &boxes[i]) <= iou_threshold)
        {
            kept.push(i);
        }
    }
    kept
}

pub(super) struct Detector {
    pub labels: Vec<String>,
    layout: Layout,
    score_threshold: f32,
    iou_threshold: Option<f32>,
    groups: BTreeMap<String, Vec<String>>,
}

impl Detector {
    /// Reads the labels, checks the groups, the names and the model's declared output.
    pub fn load(file: &Path, p: &DetectorPreset, model: &ImageModel) -> Result<Detector> {
        let labels = read_labels(file, &p.labels)?;
        check_groups(file, &p.labels, &labels, &p.groups)?;
        check_names(file, &labels, &p.groups)?;
        let d = Detector {
            labels,
            layout: p.layout,
            score_threshold: p.score_threshold,
            iou_threshold: p.iou_threshold,
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
        let (f, a) = match self.layout {
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
        let want = match self.layout {
            Layout::ChannelsFirst => format!("[N, {}, A]", 4 + c),
            Layout::AnchorsFirst => format!("[N, A, {}]", 4 + c),
        };
        let layout = match self.layout {
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
        out.rows
            .iter()
            .map(|row| self.detect(row, anchors))
            .collect()
    }

    fn detect(&self, row: &[f32], anchors: usize) -> Result<Vec<Detection>> {
        let c = self.labels.len();
        let cands = decode(row, anchors, c, self.layout, self.score_threshold)
            .map_err(|e| anyhow::anyhow!("detector output: {e}"))?;
        let kept: Vec<usize> = match self.iou_threshold {
            Some(t) => {
                let boxes: Vec<[f32; 4]> = cands.iter().map(|d| d.bbox).collect();
                let scores: Vec<f32> = cands.iter().map(|d| d.score).collect();
                nms(&boxes, &scores, t)
            }
            None => (0..cands.len()).collect(),
        };
        Ok(kept
            .into_iter()
            .map(|i| {
                let d = cands[i];
                Detection {
                    class: d.class,
                    label: self.labels[d.class].clone(),
                    score: d.score,
                    bbox: d.bbox,
                }
            })
            .collect())
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
            return format!("nothing detected (scores < {})", self.score_threshold);
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
            layout,
            score_threshold: 0.5,
            iou_threshold: Some(0.5),
            groups: BTreeMap::new(),
        }
    }

    /// A model whose output shape is only known when it runs is checked then.
    #[test]
    fn an_output_that_does_not_fit_is_named_when_it_runs() {
        let out = |shape: Vec<usize>| PerImage {
            rows: vec![vec![0.0; shape.iter().product()]; 2],
            shape: Some(shape),
            geometry: Vec::new(),
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
