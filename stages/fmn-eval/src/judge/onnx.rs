//! An ONNX image classifier as judge, through ONNX Runtime (`ort`, loaded at run time from
//! `ORT_DYLIB_PATH`), described by a YAML preset:
//!
//! ```yaml
//! model: classifier.onnx        # relative to the preset
//! labels: labels.txt            # one label per line, in output order
//! input: {size: [224, 224], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
//! softmax: true                 # the output is logits (false: already probabilities)
//! min_confidence: 0.0           # the top label's probability needed to be sure
//! groups: {cat: [tabby, tiger cat]}
//! ```
//!
//! Attributes: `label` (the top label) and `group` (the first group holding the top label).
use super::{Judge, Judgement};
use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::RgbImage;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxPreset {
    pub model: PathBuf,
    pub labels: PathBuf,
    pub input: InputSpec,
    #[serde(default = "yes")]
    pub softmax: bool,
    #[serde(default)]
    pub min_confidence: f32,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The input's name (default: the model's first input).
    #[serde(default)]
    pub input_name: Option<String>,
    /// The output's name (default: the model's first output).
    #[serde(default)]
    pub output_name: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Width and height the image is resized to.
    pub size: [u32; 2],
    /// Per-channel (RGB) mean and standard deviation, on values scaled to 0..1.
    #[serde(default = "zero3")]
    pub mean: [f32; 3],
    #[serde(default = "one3")]
    pub std: [f32; 3],
}

fn zero3() -> [f32; 3] {
    [0.0; 3]
}
fn one3() -> [f32; 3] {
    [1.0; 3]
}

static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

fn environment() -> Result<&'static ort::environment::Environment> {
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let lib = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => bail!(
            "ORT_DYLIB_PATH is not set: the onnx judge needs ONNX Runtime \
             (run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)`)"
        ),
    };
    if !lib.is_file() {
        bail!("ORT_DYLIB_PATH={}: no such file", lib.display());
    }
    let env = ort::init_from(&lib)
        .map_err(|e| anyhow::anyhow!("cannot load ONNX Runtime {}: {e}", lib.display()))?
        .with_name("fmn-eval")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start ONNX Runtime: {e}"))?;
    Ok(ENV.get_or_init(|| env))
}

pub struct OnnxJudge {
    preset: OnnxPreset,
    labels: Vec<String>,
    session: Mutex<Session>,
    input: String,
    output: String,
}

impl OnnxJudge {
    /// Loads the preset, its labels and its model; errors name the file that does not load.
    pub fn load(preset_path: &Path) -> Result<OnnxJudge> {
        let mut preset: OnnxPreset = fmn_core::load_yaml(preset_path)
            .with_context(|| format!("--judge onnx:{}", preset_path.display()))?;
        let base = preset_path.parent().unwrap_or(Path::new("."));
        preset.model = base.join(&preset.model);
        preset.labels = base.join(&preset.labels);
        let text = std::fs::read_to_string(&preset.labels).with_context(|| {
            format!(
                "judge preset {}: cannot read the labels file {}",
                preset_path.display(),
                preset.labels.display()
            )
        })?;
        let labels: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if labels.is_empty() {
            bail!("labels file {}: no labels", preset.labels.display());
        }
        for (g, members) in &preset.groups {
            if let Some(m) = members.iter().find(|m| !labels.contains(m)) {
                bail!(
                    "judge preset {}: group `{g}` names `{m}`, which is not in {}",
                    preset_path.display(),
                    preset.labels.display()
                );
            }
        }
        let env = environment()?;
        if !preset.model.is_file() {
            bail!(
                "judge preset {}: no model file {}",
                preset_path.display(),
                preset.model.display()
            );
        }
        let session = Session::builder(env)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .commit_from_file(&preset.model)
            .map_err(|e| {
                anyhow::anyhow!("cannot load the ONNX model {}: {e}", preset.model.display())
            })?;
        let input = match &preset.input_name {
            Some(n) => n.clone(),
            None => session
                .inputs()
                .first()
                .map(|i| i.name().to_string())
                .context("the model has no inputs")?,
        };
        let output = match &preset.output_name {
            Some(n) => n.clone(),
            None => session
                .outputs()
                .first()
                .map(|o| o.name().to_string())
                .context("the model has no outputs")?,
        };
        Ok(OnnxJudge {
            preset,
            labels,
            session: Mutex::new(session),
            input,
            output,
        })
    }

    /// The model input for `images`: resized, scaled to 0..1, normalised, NCHW.
    pub fn prepare(&self, images: &[RgbImage]) -> Vec<f32> {
        prepare(&self.preset.input, images)
    }

    /// Class probabilities, one row per image.
    pub fn probabilities(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let [w, h] = self.preset.input.size;
        let data = self.prepare(images);
        let tensor = Tensor::from_array(([images.len(), 3, h as usize, w as usize], data))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(vec![(self.input.as_str(), tensor)])
            .map_err(|e| anyhow::anyhow!("the ONNX judge failed: {e}"))?;
        let value = outputs
            .get(&self.output)
            .with_context(|| format!("the model gave no output `{}`", self.output))?;
        let (shape, values) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow::anyhow!("output `{}`: {e}", self.output))?;
        let n = self.labels.len();
        if shape.len() != 2 || shape[0] as usize != images.len() || shape[1] as usize != n {
            bail!(
                "output `{}` has shape {:?}; expected [{}, {n}] for {n} labels",
                self.output,
                &shape[..],
                images.len()
            );
        }
        Ok(values
            .chunks(n)
            .map(|row| {
                if self.preset.softmax {
                    softmax(row)
                } else {
                    row.to_vec()
                }
            })
            .collect())
    }
}

/// Resizes (Triangle filter), scales to 0..1 and normalises, NCHW.
pub fn prepare(spec: &InputSpec, images: &[RgbImage]) -> Vec<f32> {
    let [w, h] = spec.size;
    let plane = (w * h) as usize;
    let mut out = vec![0f32; images.len() * 3 * plane];
    for (i, img) in images.iter().enumerate() {
        let resized;
        let img = if img.dimensions() == (w, h) {
            img
        } else {
            resized = image::imageops::resize(img, w, h, FilterType::Triangle);
            &resized
        };
        for (p, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[(i * 3 + c) * plane + p] = (px[c] as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            }
        }
    }
    out
}

/// Softmax of one row of logits.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl Judge for OnnxJudge {
    fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in expect {
            match k.as_str() {
                "label" if !self.labels.contains(v) => {
                    return Err(format!("`label: {v}` is not one of the judge's labels"))
                }
                "group" if !self.preset.groups.contains_key(v) => {
                    return Err(format!(
                        "`group: {v}` is not a group of the judge preset (groups: {})",
                        self.preset
                            .groups
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
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

    fn judge(&self, images: &[RgbImage]) -> Result<Vec<Judgement>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(32) {
            for probs in self.probabilities(chunk)? {
                let (best, p) =
                    probs
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
                let label = &self.labels[best];
                let sure = p >= self.preset.min_confidence;
                let group = self
                    .preset
                    .groups
                    .iter()
                    .find(|(_, m)| m.contains(label))
                    .map(|(g, _)| g.clone());
                out.push(Judgement {
                    labels: BTreeMap::from([
                        ("label".to_string(), sure.then(|| label.clone())),
                        ("group".to_string(), if sure { group } else { None }),
                    ]),
                    description: format!("{label} ({p:.2})"),
                });
            }
        }
        Ok(out)
    }
}
