//! The `onnx:` judge's preset files: the model, how images are fed to it, and per `kind` what
//! its output means. Each kind has its own set of keys; a key that is unknown, or that belongs
//! to another kind, is an error naming it and the file.
use anyhow::{bail, Context, Result};
pub use fmn_onnx::InputSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the model's output is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnnxKind {
    /// Class scores `[N, C]`.
    #[default]
    Classifier,
    /// YOLOv8-style boxes with class scores, `[N, 4+C, A]` or `[N, A, 4+C]`.
    Detector,
    /// A face embedding `[N, D]`, compared with reference images by cosine similarity.
    Face,
}

impl OnnxKind {
    /// The kind's name as written in presets.
    pub fn word(self) -> &'static str {
        match self {
            OnnxKind::Classifier => "classifier",
            OnnxKind::Detector => "detector",
            OnnxKind::Face => "face",
        }
    }
}

fn yes() -> bool {
    true
}
fn quarter() -> f32 {
    0.25
}

/// Where a detector's output keeps the 4+C box and score rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[N, 4+C, A]`: YOLOv8 and NudeNet 3.x exports.
    #[default]
    ChannelsFirst,
    /// `[N, A, 4+C]`: the same, transposed.
    AnchorsFirst,
}

/// How a detector thins overlapping boxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nms {
    /// fmn's greedy NMS: boxes scoring ≥ `score_threshold`, IoU of the model-input corner
    /// boxes in f32, a box dropped when its IoU with a better kept one is > `iou_threshold`.
    #[default]
    Greedy,
    /// OpenCV's `cv::dnn::NMSBoxes` (NudeNet 3.x): boxes scoring > `score_threshold`, IoU of
    /// the image-pixel boxes in f64 as OpenCV computes it, rounded through f32, a box kept
    /// when that is ≤ `iou_threshold`; two empty boxes overlap fully.
    Opencv,
}

/// The parts every kind shares, with paths resolved against the preset's folder.
#[derive(Debug, Clone)]
pub struct OnnxPreset {
    /// The preset file itself (for error messages).
    pub path: PathBuf,
    pub model: PathBuf,
    /// The sha256 the model file must have (lowercase hex), when the preset pins it.
    pub model_sha256: Option<String>,
    /// What to do when the model file is missing (added to that error).
    pub model_help: Option<String>,
    pub input: InputSpec,
    /// The input's name (default: the model's first input).
    pub input_name: Option<String>,
    /// The output's name (default: the model's first output).
    pub output_name: Option<String>,
    pub kind: KindPreset,
}

/// The kind-specific part of a preset.
#[derive(Debug, Clone)]
pub enum KindPreset {
    Classifier(ClassifierPreset),
    Detector(DetectorPreset),
    Face(FacePreset),
}

#[derive(Debug, Clone)]
pub struct ClassifierPreset {
    pub labels: PathBuf,
    /// The output is logits (false: already probabilities).
    pub softmax: bool,
    /// The top label's probability needed to be sure.
    pub min_confidence: f32,
    pub groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct DetectorPreset {
    pub labels: PathBuf,
    pub layout: Layout,
    /// Anchors whose best class score is at least this are decoded (default:
    /// `score_threshold`). NudeNet: 0.2. Only the candidates' list depends on it.
    pub prefilter_threshold: Option<f32>,
    /// A box counts when its best class score is at least this (`nms: greedy`) or above it
    /// (`nms: opencv`).
    pub score_threshold: f32,
    /// Class-agnostic NMS drops a box overlapping a better kept one by more than this IoU
    /// (`None`: no NMS; `nms: opencv` needs it).
    pub iou_threshold: Option<f32>,
    pub nms: Nms,
    pub groups: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct FacePreset {
    /// Identity name → folder of its reference images.
    pub references: BTreeMap<String, PathBuf>,
    /// The cosine similarity needed to name an identity.
    pub threshold: f32,
}

/// Only the kind; every other key is left to the kind's own struct.
#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: OnnxKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifierFile {
    #[serde(default, rename = "kind")]
    _kind: OnnxKind,
    model: PathBuf,
    #[serde(default)]
    model_sha256: Option<String>,
    #[serde(default)]
    model_help: Option<String>,
    labels: PathBuf,
    input: InputSpec,
    #[serde(default = "yes")]
    softmax: bool,
    #[serde(default)]
    min_confidence: f32,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    input_name: Option<String>,
    #[serde(default)]
    output_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorFile {
    #[serde(rename = "kind")]
    _kind: OnnxKind,
    model: PathBuf,
    #[serde(default)]
    model_sha256: Option<String>,
    #[serde(default)]
    model_help: Option<String>,
    labels: PathBuf,
    input: InputSpec,
    #[serde(default)]
    layout: Layout,
    #[serde(default)]
    prefilter_threshold: Option<f32>,
    #[serde(default = "quarter")]
    score_threshold: f32,
    #[serde(default)]
    iou_threshold: Option<f32>,
    #[serde(default)]
    nms: Nms,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    input_name: Option<String>,
    #[serde(default)]
    output_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a folder, or a map of identity name to folder")]
enum References {
    One(PathBuf),
    Named(BTreeMap<String, PathBuf>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaceFile {
    #[serde(rename = "kind")]
    _kind: OnnxKind,
    model: PathBuf,
    #[serde(default)]
    model_sha256: Option<String>,
    #[serde(default)]
    model_help: Option<String>,
    input: InputSpec,
    references: References,
    threshold: f32,
    #[serde(default)]
    input_name: Option<String>,
    #[serde(default)]
    output_name: Option<String>,
}

/// The keys every kind's file has, moved out of the kind's `*File` (serde's `flatten` would
/// share them, but it does not work with `deny_unknown_fields`).
macro_rules! common_keys {
    ($f:ident) => {
        Common {
            model: $f.model,
            model_sha256: $f.model_sha256,
            model_help: $f.model_help,
            input: $f.input,
            input_name: $f.input_name,
            output_name: $f.output_name,
        }
    };
}

impl OnnxPreset {
    /// Reads the preset at `path` (its `kind` first, then the keys of that kind) and resolves
    /// its paths against the preset's folder; errors name the file and the bad key or value.
    pub fn load(path: &Path) -> Result<OnnxPreset> {
        let ctx = || format!("--judge onnx:{}", path.display());
        let KindOnly { kind } = fmn_core::load_yaml(path).with_context(ctx)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let in_kind = || format!("--judge onnx:{} (kind: {})", path.display(), kind.word());
        let preset = match kind {
            OnnxKind::Classifier => {
                let f: ClassifierFile = fmn_core::load_yaml(path).with_context(in_kind)?;
                let kind = KindPreset::Classifier(ClassifierPreset {
                    labels: base.join(f.labels),
                    softmax: f.softmax,
                    min_confidence: f.min_confidence,
                    groups: f.groups,
                });
                common(path, common_keys!(f), kind)
            }
            OnnxKind::Detector => {
                let f: DetectorFile = fmn_core::load_yaml(path).with_context(in_kind)?;
                let kind = KindPreset::Detector(DetectorPreset {
                    labels: base.join(f.labels),
                    layout: f.layout,
                    prefilter_threshold: f.prefilter_threshold,
                    score_threshold: f.score_threshold,
                    iou_threshold: f.iou_threshold,
                    nms: f.nms,
                    groups: f.groups,
                });
                common(path, common_keys!(f), kind)
            }
            OnnxKind::Face => {
                let f: FaceFile = fmn_core::load_yaml(path).with_context(in_kind)?;
                let kind = KindPreset::Face(FacePreset {
                    references: references(path, f.references)?,
                    threshold: f.threshold,
                });
                common(path, common_keys!(f), kind)
            }
        };
        preset.check()?;
        Ok(preset)
    }

    /// The preset's kind.
    pub fn kind(&self) -> OnnxKind {
        match self.kind {
            KindPreset::Classifier(_) => OnnxKind::Classifier,
            KindPreset::Detector(_) => OnnxKind::Detector,
            KindPreset::Face(_) => OnnxKind::Face,
        }
    }

    /// Checks values serde cannot: sizes, normalisation, thresholds.
    fn check(&self) -> Result<()> {
        let file = self.path.display();
        if let Err(e) = self.input.validate() {
            bail!("judge preset {file}: {e}");
        }
        if let Some(h) = &self.model_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("judge preset {file}: model_sha256 `{h}` is not 64 hex digits");
            }
        }
        match &self.kind {
            KindPreset::Classifier(_) => {}
            KindPreset::Detector(d) => {
                if !d.score_threshold.is_finite() {
                    bail!("judge preset {file}: score_threshold must be a number");
                }
                if d.prefilter_threshold.is_some_and(|t| !t.is_finite()) {
                    bail!("judge preset {file}: prefilter_threshold must be a number");
                }
                if let Some(t) = d.iou_threshold.filter(|t| !(*t > 0.0 && *t <= 1.0)) {
                    bail!("judge preset {file}: iou_threshold {t} is not in (0, 1]");
                }
                if d.nms == Nms::Opencv && d.iou_threshold.is_none() {
                    bail!("judge preset {file}: `nms: opencv` needs an iou_threshold");
                }
            }
            KindPreset::Face(f) => {
                if !(-1.0..=1.0).contains(&f.threshold) {
                    bail!(
                        "judge preset {file}: threshold {} is not a cosine similarity in [-1, 1]",
                        f.threshold
                    );
                }
            }
        }
        Ok(())
    }
}

/// The keys every kind has, as read.
struct Common {
    model: PathBuf,
    model_sha256: Option<String>,
    model_help: Option<String>,
    input: InputSpec,
    input_name: Option<String>,
    output_name: Option<String>,
}

fn common(path: &Path, c: Common, kind: KindPreset) -> OnnxPreset {
    let base = path.parent().unwrap_or(Path::new("."));
    OnnxPreset {
        path: path.to_path_buf(),
        model: base.join(c.model),
        model_sha256: c.model_sha256.map(|h| h.to_ascii_lowercase()),
        model_help: c.model_help,
        input: c.input,
        input_name: c.input_name,
        output_name: c.output_name,
        kind,
    }
}

/// Identity name → folder, resolved against the preset's folder; a single folder names its
/// identity after itself.
fn references(path: &Path, refs: References) -> Result<BTreeMap<String, PathBuf>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let map = match refs {
        References::Named(map) => map,
        References::One(dir) => {
            let name = dir
                .components()
                .next_back()
                .and_then(|c| match c {
                    std::path::Component::Normal(n) => n.to_str(),
                    _ => None,
                })
                .with_context(|| {
                    format!(
                        "judge preset {}: cannot name the identity of references folder {}; \
                         write `references: {{NAME: FOLDER}}`",
                        path.display(),
                        dir.display()
                    )
                })?
                .to_string();
            BTreeMap::from([(name, dir)])
        }
    };
    if map.is_empty() {
        bail!("judge preset {}: `references` is empty", path.display());
    }
    if map.contains_key("none") {
        bail!(
            "judge preset {}: `none` cannot name an identity (it means no identity matched)",
            path.display()
        );
    }
    Ok(map.into_iter().map(|(k, v)| (k, base.join(v))).collect())
}

/// Reads a labels file: one label per line, blank lines skipped.
pub(super) fn read_labels(preset: &Path, labels: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(labels).with_context(|| {
        format!(
            "judge preset {}: cannot read the labels file {}",
            preset.display(),
            labels.display()
        )
    })?;
    let labels_list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if labels_list.is_empty() {
        bail!("labels file {}: no labels", labels.display());
    }
    Ok(labels_list)
}

/// Checks that every group member is a label.
pub(super) fn check_groups(
    preset: &Path,
    labels_file: &Path,
    labels: &[String],
    groups: &BTreeMap<String, Vec<String>>,
) -> Result<()> {
    for (g, members) in groups {
        if let Some(m) = members.iter().find(|m| !labels.contains(m)) {
            bail!(
                "judge preset {}: group `{g}` names `{m}`, which is not in {}",
                preset.display(),
                labels_file.display()
            );
        }
    }
    Ok(())
}
