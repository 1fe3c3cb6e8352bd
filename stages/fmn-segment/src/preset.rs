//! Model presets: small YAML files (`configs/segment/NAME.yaml`) that say how to feed a
//! segmentation model and how to turn what it says into a mask.
//!
//! ```yaml
//! name: toy
//! description: The toy world's figure segmenter.
//! model: ../../data/toy-segmenter/model.onnx   # relative to this file; omit if not shipped
//! input:                   # the keys of fmn_onnx::InputSpec (size, resize, filter, channels,
//!   name: image            #   range, mean, std, pad), and the model input's name (omit to
//!   size: [64, 64]         #   use the model's first input)
//!   resize: stretch
//!   mean: [0.5, 0.5, 0.5]
//!   std: [0.5, 0.5, 0.5]
//! output:
//!   name: mask             # omit to use the model's first output
//!   kind: probability      # logits | probability | matte
//!   activation: none       # probability only: none | sigmoid
//!   minmax: false          # rescale the map so its smallest value is 0 and largest 1
//!   classes: []            # logits only: the class ids that are the concept
//! post:
//!   threshold: 0.5         # null keeps soft values
//!   keep_largest: false    # keep only the largest connected region
//!   erode: 0               # pixels, at the image's own size
//!   dilate: 0
//!   feather: 0.0           # Gaussian sigma in pixels
//! ```
use crate::error::{Result, SegmentError};
pub use fmn_onnx::{ChannelOrder, Filter, InputSpec, ResizeMode, ValueRange};
use serde::{de::Error as _, Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Per-class scores `[N, C, H, W]`: softmax over C, the mask is the summed probability of
    /// the chosen `classes`.
    Logits,
    /// One channel `[N, 1, H, W]` (or `[N, H, W]`) of foreground probability (or logits, with
    /// `activation: sigmoid`).
    Probability,
    /// An alpha matte `[N, 1, H, W]` in 0..1; kept soft unless `post.threshold` is set.
    Matte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    None,
    Sigmoid,
}

/// The preset's `input:` block: the model input's `name` (default: the model's first input)
/// and how images are fed to it, the keys of [`InputSpec`] (which it dereferences to).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    pub name: Option<String>,
    pub spec: InputSpec,
}

impl std::ops::Deref for ModelInput {
    type Target = InputSpec;
    fn deref(&self) -> &InputSpec {
        &self.spec
    }
}

impl<'de> Deserialize<'de> for ModelInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut keys = serde_yaml::Mapping::deserialize(d)?;
        let name = match keys.remove("name") {
            Some(v) => {
                serde_yaml::from_value(v).map_err(|e| D::Error::custom(format!("name: {e}")))?
            }
            None => None,
        };
        let spec =
            serde_yaml::from_value(serde_yaml::Value::Mapping(keys)).map_err(D::Error::custom)?;
        Ok(ModelInput { name, spec })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub kind: OutputKind,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub minmax: bool,
    #[serde(default)]
    pub classes: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcess {
    #[serde(default = "half")]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub keep_largest: bool,
    #[serde(default)]
    pub erode: u32,
    #[serde(default)]
    pub dilate: u32,
    #[serde(default)]
    pub feather: f32,
}

fn half() -> Option<f32> {
    Some(0.5)
}

impl Default for PostProcess {
    fn default() -> Self {
        Self {
            threshold: half(),
            keep_largest: false,
            erode: 0,
            dilate: 0,
            feather: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The ONNX file, relative to the preset's folder (resolved by [`Preset::load`]).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Where the weights come from, for presets whose weights are not shipped.
    #[serde(default)]
    pub weights: Option<String>,
    pub input: ModelInput,
    pub output: OutputSpec,
    #[serde(default)]
    pub post: PostProcess,
}

/// The folder of the shipped presets in this source tree.
pub fn builtin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/segment");
    dir.canonicalize().unwrap_or(dir)
}

/// Where a preset named `name` is looked for: `configs/segment/` under the current folder and
/// its ancestors, then the source tree's own `configs/segment/`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let d = dir.join("configs/segment");
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    let builtin = builtin_dir();
    if builtin.is_dir() && !dirs.iter().any(|d| same_dir(d, &builtin)) {
        dirs.push(builtin);
    }
    dirs
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The names of the presets in the first folder of [`search_dirs`] that has any.
pub fn known_presets() -> Vec<String> {
    let mut names: Vec<String> = search_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter_map(|e| {
            let p = e.path();
            (p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .flatten()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `arg` names a file (has a path separator or a YAML/ONNX extension) rather than a
/// preset name.
fn looks_like_path(arg: &str) -> bool {
    arg.contains('/')
        || arg.contains('\\')
        || arg.ends_with(".yaml")
        || arg.ends_with(".yml")
        || arg.ends_with(".onnx")
}

impl Preset {
    /// Reads a preset file; a relative `model` becomes relative to the file's folder.
    pub fn load(path: &Path) -> Result<Preset> {
        let mut preset: Preset = fmn_core::load_yaml(path)?;
        if let Some(m) = &preset.model {
            if m.is_relative() {
                let dir = path.parent().unwrap_or(Path::new("."));
                let joined = dir.join(m);
                preset.model = Some(joined.canonicalize().unwrap_or(joined));
            }
        }
        preset.validate().map_err(|message| SegmentError::Preset {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(preset)
    }

    /// Finds a preset by name (see [`search_dirs`]) or reads it from a path.
    pub fn find(name_or_path: &str) -> Result<Preset> {
        if looks_like_path(name_or_path) {
            return Preset::load(Path::new(name_or_path));
        }
        let dirs = search_dirs();
        for dir in &dirs {
            for ext in ["yaml", "yml"] {
                let p = dir.join(format!("{name_or_path}.{ext}"));
                if p.is_file() {
                    return Preset::load(&p);
                }
            }
        }
        Err(SegmentError::UnknownPreset {
            name: name_or_path.to_string(),
            looked: if dirs.is_empty() {
                "no configs/segment folder found".into()
            } else {
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            known: known_presets().join(", "),
        })
    }

    /// Checks the values serde cannot: sizes, std, kind-specific fields.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.input.validate()?;
        match self.output.kind {
            OutputKind::Logits => {
                if self.output.classes.is_empty() {
                    return Err("output.kind logits needs output.classes (the class ids that are the concept)".into());
                }
                if self.output.activation != Activation::None {
                    return Err(
                        "output.activation is for kind probability only (logits get a softmax)"
                            .into(),
                    );
                }
            }
            OutputKind::Probability | OutputKind::Matte => {
                if !self.output.classes.is_empty() {
                    return Err(format!(
                        "output.classes is for kind logits only, not {:?}",
                        self.output.kind
                    ));
                }
                if self.output.kind == OutputKind::Matte
                    && self.output.activation != Activation::None
                {
                    return Err("output.activation is for kind probability only".into());
                }
            }
        }
        if let Some(t) = self.post.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(format!("post.threshold {t} must lie in 0..1"));
            }
        }
        if !self.post.feather.is_finite() || self.post.feather < 0.0 || self.post.feather > 1000.0 {
            return Err("post.feather must lie in 0..1000".into());
        }
        if self.post.erode > 1000 || self.post.dilate > 1000 {
            return Err("post.erode and post.dilate must be at most 1000 pixels".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Preset, String> {
        let p: Preset = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    const MIN: &str = "name: t\ninput: {size: [8, 8]}\noutput: {kind: probability}\n";

    #[test]
    fn defaults() {
        let p = parse(MIN).unwrap();
        assert_eq!(p.input.resize, ResizeMode::Stretch);
        assert_eq!(p.input.std, [1.0; 3]);
        assert_eq!(p.post.threshold, Some(0.5));
        assert!(p.input.name.is_none());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("name: t\ninput: {size: [8, 8], sise: 3}\noutput: {kind: probability}\n")
            .unwrap_err();
        assert!(err.contains("sise"), "{err}");
    }

    #[test]
    fn kind_specific_fields() {
        let err = parse("name: t\ninput: {size: [8, 8]}\noutput: {kind: logits}\n").unwrap_err();
        assert!(err.contains("classes"), "{err}");
        let err = parse("name: t\ninput: {size: [8, 8]}\noutput: {kind: matte, classes: [1]}\n")
            .unwrap_err();
        assert!(err.contains("logits only"), "{err}");
        let err = parse("name: t\ninput: {size: [0, 8]}\noutput: {kind: matte}\n").unwrap_err();
        assert!(err.contains("input.size"), "{err}");
        let err = parse("name: t\ninput: {size: [8, 8], std: [1, 0, 1]}\noutput: {kind: matte}\n")
            .unwrap_err();
        assert!(err.contains("std"), "{err}");
        let p = parse(
            "name: t\ninput: {size: [8, 8]}\noutput: {kind: matte}\npost: {threshold: null}\n",
        )
        .unwrap();
        assert_eq!(p.post.threshold, None);
    }

    #[test]
    fn shipped_presets_parse() {
        let dir = builtin_dir();
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let preset = Preset::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert_eq!(
                    Some(preset.name.as_str()),
                    p.file_stem().and_then(|s| s.to_str())
                );
                n += 1;
            }
        }
        assert!(n >= 6, "only {n} presets in {}", dir.display());
    }
}
