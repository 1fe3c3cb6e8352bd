//! Judges: what an image shows, as attribute → label, compared with a prompt's `expect`.
mod clip;
mod onnx;
mod toy;

pub use clip::ClipJudge;
pub use onnx::{
    candidates, decode, image_box, iou, l2_normalise, nms, nms_opencv, opencv_overlap,
    reference_files, softmax, Candidate, ClassifierPreset, Decoding, Detection, DetectorPreset,
    FacePreset, IdentityReferences, InputSpec, KindPreset, Layout, Nms, OnnxJudge, OnnxKind,
    OnnxPreset, DETECTED,
};
pub use toy::ToyJudge;

use anyhow::Result;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which judge `--judge` names.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeSpec {
    /// The toy world's judge.
    Toy,
    /// An ONNX model described by a YAML preset file.
    Onnx(PathBuf),
    /// A CLIP model folder (Hugging Face `CLIPModel` layout).
    Clip(PathBuf),
}

impl std::str::FromStr for JudgeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "toy" => Ok(JudgeSpec::Toy),
            Some(("onnx", f)) if !f.is_empty() => Ok(JudgeSpec::Onnx(f.into())),
            Some(("clip", d)) if !d.is_empty() => Ok(JudgeSpec::Clip(d.into())),
            _ => Err(format!(
                "unknown judge `{s}`: expected toy, onnx:PRESET.yaml or clip:DIR"
            )),
        }
    }
}

impl std::fmt::Display for JudgeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JudgeSpec::Toy => write!(f, "toy"),
            JudgeSpec::Onnx(p) => write!(f, "onnx:{}", p.display()),
            JudgeSpec::Clip(p) => write!(f, "clip:{}", p.display()),
        }
    }
}

/// What a judge says about one image: each attribute's label when the judge is sure of it
/// (`None`: unsure), and a short description for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub labels: BTreeMap<String, Option<String>>,
    pub description: String,
}

impl Judgement {
    /// Whether the judge is sure of every expected attribute and agrees with it.
    pub fn matches(&self, expect: &BTreeMap<String, String>) -> bool {
        expect.iter().all(|(k, v)| {
            self.labels
                .get(k)
                .and_then(|l| l.as_deref())
                .is_some_and(|l| l.eq_ignore_ascii_case(v))
        })
    }
}

/// The files an `onnx:` judge was loaded from, recorded in `metrics.json` so that a number
/// can be traced to the exact model (e.g. NudeNet 3.4.2's `320n.onnx`) and preset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeModel {
    /// The preset file, as given.
    pub preset: String,
    pub preset_sha256: String,
    /// The model file, resolved against the preset's folder.
    pub model: String,
    pub model_sha256: String,
}

/// A judge of images.
pub trait Judge {
    /// The judge's preset and model files, for judges loaded from files that are not shipped
    /// (`onnx:`); `None` for the others.
    fn model(&self) -> Option<JudgeModel> {
        None
    }
    /// Checks a prompt's `expect` against what this judge can say; the error names the bad
    /// key or value.
    fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String>;
    fn judge(&self, images: &[RgbImage]) -> Result<Vec<Judgement>>;
    /// CLIP score of each image with its prompt, for judges that have one.
    fn clip_scores(&self, _images: &[RgbImage], _prompts: &[&str]) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }
}

/// Loads the judge `spec` names.
pub fn load(spec: &JudgeSpec) -> Result<Box<dyn Judge>> {
    Ok(match spec {
        JudgeSpec::Toy => Box::new(ToyJudge::load()?),
        JudgeSpec::Onnx(preset) => Box::new(OnnxJudge::load(preset)?),
        JudgeSpec::Clip(dir) => Box::new(ClipJudge::load(dir)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_judge_specs() {
        assert_eq!("toy".parse::<JudgeSpec>(), Ok(JudgeSpec::Toy));
        assert_eq!(
            "onnx:a/b.yaml".parse::<JudgeSpec>(),
            Ok(JudgeSpec::Onnx("a/b.yaml".into()))
        );
        assert!("onnx:".parse::<JudgeSpec>().is_err());
        assert!("resnet".parse::<JudgeSpec>().is_err());
    }

    #[test]
    fn a_judgement_matches_only_sure_agreeing_labels() {
        let j = Judgement {
            labels: BTreeMap::from([
                ("object".to_string(), Some("circle".to_string())),
                ("colour".to_string(), None),
            ]),
            description: String::new(),
        };
        let e = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(j.matches(&e(&[("object", "circle")])));
        assert!(!j.matches(&e(&[("object", "square")])));
        assert!(!j.matches(&e(&[("object", "circle"), ("colour", "yellow")])));
    }
}
