//! A detector's raw output, one image at a time, to kept boxes: the anchors above the
//! pre-filter ([`candidates`]), each box brought back to the image's pixels ([`image_box`]),
//! then thinned by NMS ([`Decoding::keep`]). With NudeNet's preset every step is nudenet
//! 3.4.2's, to the bit (tests/fixtures/gen/NUDENET_3.4.2.md, "Postprocessing").
use super::nms::{greedy, iou as iou_of, nms_opencv};
use super::preset::{DetectorPreset, Layout, Nms};
use fmn_onnx::Geometry;
use serde::Serialize;

/// One box the detector kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// The label's index in the labels file.
    #[serde(skip)]
    pub class: usize,
    pub label: String,
    /// The box's best class score.
    pub score: f32,
    /// `[x0, y0, x1, y1]` in model-input pixels.
    #[serde(skip)]
    pub bbox: [f32; 4],
    /// `[x, y, width, height]` in the image's pixels, clipped to the image (f32, as NudeNet
    /// computes it before reporting).
    #[serde(skip)]
    pub rect: [f32; 4],
    /// `rect` truncated toward zero, each value on its own (Python's `int()`), as NudeNet
    /// reports boxes: `[x, y, width, height]` in the image's pixels.
    #[serde(rename = "box")]
    pub pixels: [i64; 4],
}

/// An anchor above the pre-filter, before NMS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Where the box is in the output's anchor axis.
    pub anchor: usize,
    /// The class with the best score (the first one on ties).
    pub class: usize,
    pub score: f32,
    /// `[x0, y0, x1, y1]` from `cx, cy, w, h`.
    pub bbox: [f32; 4],
    /// The raw `[cx, cy, w, h]`, in model-input pixels.
    pub centre_size: [f32; 4],
}

/// Every anchor of one image's output (`anchors` boxes of 4 + `classes` values, laid out as
/// `layout` says) whose best class score is at least `threshold`, in anchor order. NaN
/// scores never win.
pub fn candidates(
    row: &[f32],
    anchors: usize,
    classes: usize,
    layout: Layout,
    threshold: f32,
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
        if score >= threshold {
            let (cx, cy, w, h) = (at(a, 0), at(a, 1), at(a, 2), at(a, 3));
            out.push(Candidate {
                anchor: a,
                class,
                score,
                bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
                centre_size: [cx, cy, w, h],
            });
        }
    }
    Ok(out)
}

/// [`candidates`] at `score_threshold`, best first (ties keep anchor order).
pub fn decode(
    row: &[f32],
    anchors: usize,
    classes: usize,
    layout: Layout,
    score_threshold: f32,
) -> Result<Vec<Candidate>, String> {
    let mut out = candidates(row, anchors, classes, layout, score_threshold)?;
    out.sort_by(|x, y| y.score.total_cmp(&x.score));
    Ok(out)
}

/// A candidate's box in the image's pixels, `[x, y, width, height]` in f32, as nudenet 3.4.2
/// computes it: `x = cx − w / 2`, scaled back through the image's placement
/// (`x · padded / 320` for NudeNet), then `x = max(0, min(x, W))`, `y` alike,
/// `w = min(w, W − x)`, `h = min(h, H − y)` (a negative size is left as it is).
pub fn image_box(c: &Candidate, geometry: &Geometry, input_size: [u32; 2]) -> [f32; 4] {
    let [cx, cy, w, h] = c.centre_size;
    let [mx, my] = geometry.axis_maps(input_size);
    let (x, y) = (mx.point(cx - w / 2.0), my.point(cy - h / 2.0));
    let (w, h) = (mx.length(w), my.length(h));
    let (iw, ih) = (geometry.width as f32, geometry.height as f32);
    // Python's min(v, limit) keeps v unless limit < v; max(0, v) keeps v only if v > 0.
    let clip = |v: f32, limit: f32| {
        let v = if limit < v { limit } else { v };
        if v > 0.0 {
            v
        } else {
            0.0
        }
    };
    let (x, y) = (clip(x, iw), clip(y, ih));
    let w = if iw - x < w { iw - x } else { w };
    let h = if ih - y < h { ih - y } else { h };
    [x, y, w, h]
}

/// The preset's keys that turn one image's output into kept boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoding {
    pub classes: usize,
    pub layout: Layout,
    /// Anchors whose best class score is at least this are candidates.
    pub prefilter_threshold: f32,
    /// Candidates that count: score ≥ this (`nms: greedy`) or > this (`nms: opencv`).
    pub score_threshold: f32,
    /// `None`: no NMS.
    pub iou_threshold: Option<f32>,
    pub nms: Nms,
    /// The model input's `[width, height]`.
    pub input_size: [u32; 2],
}

impl Decoding {
    /// The decoding a detector preset describes, for `classes` labels and a model input of
    /// `input_size`.
    pub fn new(p: &DetectorPreset, classes: usize, input_size: [u32; 2]) -> Decoding {
        Decoding {
            classes,
            layout: p.layout,
            prefilter_threshold: p.prefilter_threshold.unwrap_or(p.score_threshold),
            score_threshold: p.score_threshold,
            iou_threshold: p.iou_threshold,
            nms: p.nms,
            input_size,
        }
    }

    /// Which candidates (in [`candidates`] order, their image boxes in `rects`) are kept:
    /// indices best first.
    pub fn keep(&self, cands: &[Candidate], rects: &[[f32; 4]]) -> Vec<usize> {
        let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
        match (self.nms, self.iou_threshold) {
            (Nms::Opencv, iou) => {
                nms_opencv(rects, &scores, self.score_threshold, iou.unwrap_or(1.0))
            }
            (Nms::Greedy, iou) => {
                let mut counted: Vec<usize> = (0..cands.len())
                    .filter(|&i| scores[i] >= self.score_threshold)
                    .collect();
                counted.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
                let Some(t) = iou else {
                    return counted;
                };
                greedy(counted, |k, i| iou_of(&cands[k].bbox, &cands[i].bbox) <= t)
            }
        }
    }

    /// One image's kept detections, best first; `labels` names the classes.
    pub fn detections(
        &self,
        row: &[f32],
        anchors: usize,
        geometry: &Geometry,
        labels: &[String],
    ) -> Result<Vec<Detection>, String> {
        let cands = candidates(
            row,
            anchors,
            self.classes,
            self.layout,
            self.prefilter_threshold,
        )?;
        let rects: Vec<[f32; 4]> = cands
            .iter()
            .map(|c| image_box(c, geometry, self.input_size))
            .collect();
        Ok(self
            .keep(&cands, &rects)
            .into_iter()
            .map(|i| {
                let (c, rect) = (cands[i], rects[i]);
                Detection {
                    class: c.class,
                    label: labels.get(c.class).cloned().unwrap_or_default(),
                    score: c.score,
                    bbox: c.bbox,
                    rect,
                    pixels: rect.map(|v| v as i64),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fmn_onnx::Placement;

    fn candidate(centre_size: [f32; 4]) -> Candidate {
        Candidate {
            anchor: 0,
            class: 0,
            score: 0.5,
            bbox: [0.0; 4],
            centre_size,
        }
    }

    /// A 256 × 400 portrait padded to 400 and fed at 320: · 1.25, then clipped to the image
    /// (x ≤ 256, w ≤ 256 − x); negative corners go to 0 without shrinking the size.
    #[test]
    fn boxes_scale_back_and_clip_as_nudenet() {
        let g = Geometry {
            width: 256,
            height: 400,
            placement: Placement::Crop {
                x: 0,
                y: 0,
                w: 400,
                h: 400,
            },
        };
        let b = image_box(&candidate([100.0, 80.0, 40.0, 20.0]), &g, [320, 320]);
        assert_eq!(b, [100.0, 87.5, 50.0, 25.0]);
        // x = (300 − 20) · 1.25 = 350 → 256, w = min(50, 0) = 0.
        let b = image_box(&candidate([300.0, 80.0, 40.0, 20.0]), &g, [320, 320]);
        assert_eq!(b, [256.0, 87.5, 0.0, 25.0]);
        // x = (4 − 10) · 1.25 = −7.5 → 0, w stays 25; y + h past the bottom is cut.
        let b = image_box(&candidate([4.0, 310.0, 20.0, 40.0]), &g, [320, 320]);
        assert_eq!(b, [0.0, 362.5, 25.0, 37.5]);
    }
}
