//! An ONNX model as judge, through ONNX Runtime (fmn-onnx's: loaded at run time from
//! `--ort-lib` or `ORT_DYLIB_PATH`), described by a YAML preset whose `kind` says what the
//! model's output means. Paths are relative to the preset; a key that is unknown or belongs to
//! another kind is an error naming it and the preset file. Keys every kind has:
//!
//! ```yaml
//! kind: classifier              # classifier (default) | detector | face
//! model: model.onnx
//! model_sha256: c15d…           # optional: the model file must have this sha256
//! model_help: run scripts/…     # optional: added to the error when the model is missing
//! input: {size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
//! input_name: images            # optional (default: the model's first input)
//! output_name: output0          # optional (default: the model's first output)
//! ```
//!
//! `input` holds fmn-onnx's preprocessing keys (`fmn_onnx::InputSpec`): by default images are
//! used whole, resized (Triangle filter, aspect ratio not kept) to `input.size`
//! (`[width, height]`), scaled to 0..1, normalised with `mean`/`std` per RGB channel, NCHW;
//! `resize`, `filter`, `channels`, `range` and `pad` change that. A model whose input batch
//! axis is fixed (e.g. 1) gets batches of that size. The model file's sha256 is computed at
//! load (and checked against `model_sha256`) and recorded in `metrics.json`.
//!
//! **`kind: classifier`** — output `[N, C]`, one score per label:
//!
//! ```yaml
//! labels: labels.txt            # one label per line, in output order
//! softmax: true                 # the output is logits (false: already probabilities)
//! min_confidence: 0.0           # the top label's probability needed to be sure
//! groups: {cat: [tabby, tiger cat]}
//! ```
//!
//! Attributes: `label` (the top label) and `group` (the first group holding the top label),
//! unsure below `min_confidence`.
//!
//! **`kind: detector`** — YOLOv8-style boxes, as NudeNet 3.x exports them: output `[N, 4+C, A]`
//! (`layout: channels_first`, default) or `[N, A, 4+C]` (`layout: anchors_first`): per anchor
//! `cx, cy, w, h` then C class scores (already probabilities).
//!
//! ```yaml
//! labels: labels.txt            # C labels, in output order
//! layout: channels_first
//! prefilter_threshold: 0.2      # optional: anchors decoded (best class score ≥ this)
//! score_threshold: 0.25         # an anchor counts when its best class score is ≥ this
//!                               # (nms: opencv: > this)
//! iou_threshold: 0.45           # optional: class-agnostic NMS (IoU > this is dropped)
//! nms: greedy                   # greedy | opencv (cv::dnn::NMSBoxes, as NudeNet 3.x)
//! groups: {nudity: [FEMALE_BREAST_EXPOSED, BUTTOCKS_EXPOSED]}
//! ```
//!
//! Each anchor takes its best class (the first on ties). Its box is brought back to the
//! image's pixels through where the image lay in the input (`[x, y, w, h]`, clipped to the
//! image as NudeNet does, reported truncated to integers). `nms: greedy` compares the corner
//! boxes in model-input pixels in f32; `nms: opencv` the image-pixel boxes, as OpenCV does
//! (see [`nms_opencv`]). Attributes, always sure:
//! `label` = the label of the highest-scoring kept box, or `none` when no box passes the
//! threshold; `group` = the group of the highest-scoring kept box that is in a group (the first
//! group holding its label), or `none`; and `detected:NAME` = `yes` / `no` for every label and
//! every group NAME: whether a kept box has that label (or a label of that group). A suite
//! writes e.g. `expect: {detected:nudity: yes}` for prompts that should show the concept and
//! `{detected:nudity: no}` for the neighbours. Labels and groups may not be called `none`, nor
//! a group share a label's name. The description lists the best boxes with their scores.
//!
//! **`kind: face`** — output `[N, D]`, a face embedding (ArcFace-style). No face is detected or
//! cropped: the whole image is resized to the input size, so the model should suit whole
//! images (or the images should be face crops).
//!
//! ```yaml
//! references: {alice: refs/alice, bob: refs/bob}   # identity -> folder of .png/.jpg images
//! # references: refs/alice                         # one identity, named after its folder
//! threshold: 0.5                # cosine similarity needed to name an identity
//! ```
//!
//! The reference images are embedded once, at load, and L2-normalised. An image's similarity
//! to an identity is its embedding's highest cosine with that identity's references.
//! Attribute `identity` (always sure): the most similar identity when its cosine is ≥
//! `threshold`, else `none`; the description gives the cosine.
mod classifier;
mod decode;
mod detector;
mod face;
mod nms;
mod preset;

pub use classifier::softmax;
pub use decode::{candidates, decode, image_box, Candidate, Decoding, Detection};
pub use detector::DETECTED;
pub use face::{l2_normalise, reference_files, IdentityReferences};
pub use nms::{iou, nms, nms_opencv, opencv_overlap};
pub use preset::{
    ClassifierPreset, DetectorPreset, FacePreset, InputSpec, KindPreset, Layout, Nms, OnnxKind,
    OnnxPreset,
};

use super::{Judge, JudgeModel, Judgement};
use anyhow::{bail, Context, Result};
use classifier::Classifier;
use detector::Detector;
use face::Face;
use fmn_onnx::{ImageModel, OnnxError, PerImage, Runtime};
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::Path;

/// Images judged per model run of [`Judge::judge`] (bounds the memory the outputs take).
const JUDGE_CHUNK: usize = 32;

/// Images per model run when the model's batch axis is dynamic.
const BATCH: usize = 32;

enum Reader {
    Classifier(Classifier),
    Detector(Detector),
    Face(Face),
}

/// An `onnx:` judge: a model, its preset, and what its output means.
pub struct OnnxJudge {
    preset: OnnxPreset,
    model: ImageModel,
    reader: Reader,
    /// The preset's and the model's files and hashes.
    files: JudgeModel,
}

/// The sha256 of a file, hex.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The preset's and its model's files and sha256s; the model must exist and, when the preset
/// pins `model_sha256`, have it.
fn model_files(preset: &OnnxPreset) -> Result<JudgeModel> {
    let file = preset.path.display();
    let help = preset
        .model_help
        .as_deref()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    if !preset.model.is_file() {
        bail!(
            "judge preset {file}: no model file {}{help}",
            preset.model.display()
        );
    }
    let model_sha256 = sha256_file(&preset.model)?;
    if let Some(want) = preset.model_sha256.as_ref().filter(|w| **w != model_sha256) {
        bail!(
            "judge preset {file}: model {} has sha256 {model_sha256}, but the preset pins \
             model_sha256 {want}: it is another model{help}",
            preset.model.display()
        );
    }
    Ok(JudgeModel {
        preset: preset.path.display().to_string(),
        preset_sha256: sha256_file(&preset.path)?,
        model: preset.model.display().to_string(),
        model_sha256,
    })
}

/// The preset's model, loaded by ONNX Runtime (the process's runtime: `--ort-lib` when it
/// was loaded from there, else `ORT_DYLIB_PATH`), its input checked against `input`; and the
/// files' hashes.
fn open_model(preset: &OnnxPreset) -> Result<(ImageModel, JudgeModel)> {
    let file = preset.path.display();
    let in_preset = |e: OnnxError| anyhow::anyhow!("judge preset {file}: {e}");
    let rt = Runtime::load(None).map_err(in_preset)?;
    let files = model_files(preset)?;
    let model = rt.open(&preset.model, 0).map_err(in_preset)?;
    let model = ImageModel::new(
        model,
        preset.input.clone(),
        preset.input_name.as_deref(),
        preset.output_name.as_deref(),
    )
    .map_err(in_preset)?;
    Ok((model, files))
}

/// Runs the model on `images` in batches it accepts.
fn run(model: &ImageModel, images: &[RgbImage]) -> Result<PerImage> {
    model
        .run(images, BATCH)
        .map_err(|e| anyhow::anyhow!("the ONNX judge failed: {e}"))
}

impl OnnxJudge {
    /// Loads the preset, its labels or reference images, and its model; errors name the file
    /// that does not load or does not fit.
    pub fn load(preset_path: &Path) -> Result<OnnxJudge> {
        let preset = OnnxPreset::load(preset_path)?;
        let (model, files) = open_model(&preset)?;
        let reader = match &preset.kind {
            KindPreset::Classifier(p) => {
                Reader::Classifier(Classifier::load(&preset.path, p, &model)?)
            }
            KindPreset::Detector(p) => Reader::Detector(Detector::load(&preset.path, p, &model)?),
            KindPreset::Face(p) => Reader::Face(Face::load(&preset.path, p, &model)?),
        };
        Ok(OnnxJudge {
            preset,
            model,
            reader,
            files,
        })
    }

    /// The preset's kind.
    pub fn kind(&self) -> OnnxKind {
        self.preset.kind()
    }

    /// The preset as loaded.
    pub fn preset(&self) -> &OnnxPreset {
        &self.preset
    }

    /// A detector's labels, in output order.
    pub fn detector_labels(&self) -> Result<&[String]> {
        let Reader::Detector(d) = &self.reader else {
            return Err(self.not_a(OnnxKind::Detector));
        };
        Ok(&d.labels)
    }

    /// A detector's verdicts on an image whose kept boxes are `dets` (best first): what
    /// [`Judge::judge`] gives for that image, without running the model again.
    pub fn detection_judgement(&self, dets: &[Detection]) -> Result<Judgement> {
        let Reader::Detector(d) = &self.reader else {
            return Err(self.not_a(OnnxKind::Detector));
        };
        Ok(d.judgement(dets))
    }

    /// The preset's and the model's files and sha256s.
    pub fn files(&self) -> &JudgeModel {
        &self.files
    }

    /// The model input for `images` (fmn-onnx's `prepare` with the preset's `input`), NCHW.
    pub fn prepare(&self, images: &[RgbImage]) -> Vec<f32> {
        self.model.prepare(images).0
    }

    /// The name of the model output read.
    fn output(&self) -> &str {
        &self.model.output().name
    }

    fn not_a(&self, want: OnnxKind) -> anyhow::Error {
        anyhow::anyhow!(
            "judge preset {} is a {}, not a {}",
            self.preset.path.display(),
            self.kind().word(),
            want.word()
        )
    }

    /// A classifier's class probabilities, one row per image.
    pub fn probabilities(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let Reader::Classifier(c) = &self.reader else {
            return Err(self.not_a(OnnxKind::Classifier));
        };
        c.probabilities(self.output(), run(&self.model, images)?)
    }

    /// A detector's kept boxes per image, best first.
    pub fn detections(&self, images: &[RgbImage]) -> Result<Vec<Vec<Detection>>> {
        let (Reader::Detector(d), KindPreset::Detector(p)) = (&self.reader, &self.preset.kind)
        else {
            return Err(self.not_a(OnnxKind::Detector));
        };
        d.detections(self.output(), &p.labels, run(&self.model, images)?)
    }

    /// A face judge's raw (not normalised) embeddings, one per image.
    pub fn embeddings(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let Reader::Face(f) = &self.reader else {
            return Err(self.not_a(OnnxKind::Face));
        };
        f.embeddings(self.output(), run(&self.model, images)?)
    }

    /// A face judge's identities with their reference images' L2-normalised embeddings, in
    /// the order of [`OnnxJudge::similarities`]' columns.
    pub fn references(&self) -> Result<Vec<IdentityReferences<'_>>> {
        let Reader::Face(f) = &self.reader else {
            return Err(self.not_a(OnnxKind::Face));
        };
        Ok(f.identities
            .iter()
            .map(String::as_str)
            .zip(f.references.iter().map(Vec::as_slice))
            .collect())
    }

    /// A face judge's similarities: per image, per identity, the highest cosine with the
    /// identity's reference images.
    pub fn similarities(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let Reader::Face(f) = &self.reader else {
            return Err(self.not_a(OnnxKind::Face));
        };
        let emb = f.embeddings(self.output(), run(&self.model, images)?)?;
        Ok(f.similarities(&emb))
    }
}

impl Judge for OnnxJudge {
    fn model(&self) -> Option<JudgeModel> {
        Some(self.files.clone())
    }

    fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        match &self.reader {
            Reader::Classifier(c) => c.check_expect(expect),
            Reader::Detector(d) => d.check_expect(expect),
            Reader::Face(f) => f.check_expect(expect),
        }
    }

    fn judge(&self, images: &[RgbImage]) -> Result<Vec<Judgement>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(JUDGE_CHUNK) {
            match &self.reader {
                Reader::Classifier(c) => {
                    out.extend(self.probabilities(chunk)?.iter().map(|p| c.judgement(p)))
                }
                Reader::Detector(d) => {
                    out.extend(self.detections(chunk)?.iter().map(|ds| d.judgement(ds)))
                }
                Reader::Face(f) => {
                    out.extend(self.similarities(chunk)?.iter().map(|s| f.judgement(s)))
                }
            }
        }
        if out.len() != images.len() {
            bail!(
                "the onnx judge gave {} verdicts for {} images",
                out.len(),
                images.len()
            );
        }
        Ok(out)
    }
}
