//! ONNX Runtime, loaded at run time (`ort` with `load-dynamic`), and models checked against
//! their presets.
use crate::error::{Result, SegmentError};
use crate::imaging::{self, Geometry};
use crate::post;
use crate::preset::{OutputKind, Preset};
use image::{GrayImage, RgbImage};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the ONNX Runtime shared library.
pub const ORT_ENV: &str = "ORT_DYLIB_PATH";

struct Loaded {
    library: PathBuf,
    env: Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// A loaded ONNX Runtime (one per process: the first library loaded stays).
#[derive(Clone, Copy)]
pub struct Runtime {
    loaded: &'static Loaded,
}

/// The library named by `explicit`, else by `ORT_DYLIB_PATH`.
pub fn library_path(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None => match std::env::var_os(ORT_ENV) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(SegmentError::RuntimeNotConfigured),
        },
    }
}

impl Runtime {
    /// Loads ONNX Runtime from `explicit`, else from `ORT_DYLIB_PATH`. A missing file, a file
    /// that is not ONNX Runtime, or a version older than 1.31 is an error saying how to get it.
    pub fn load(explicit: Option<&Path>) -> Result<Runtime> {
        let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = LOADED.get() {
            return Ok(Runtime { loaded });
        }
        let path = library_path(explicit)?;
        if !path.is_file() {
            return Err(SegmentError::RuntimeMissing { path });
        }
        let path = path
            .canonicalize()
            .map_err(|e| SegmentError::io(&path, e))?;
        let load_err = |message: String| SegmentError::RuntimeLoad {
            path: path.clone(),
            message,
        };
        let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
        let env = builder
            .with_name("fmn-segment")
            .with_telemetry(false)
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let loaded = LOADED.get_or_init(|| Loaded { library: path, env });
        tracing::info!("ONNX Runtime loaded from {}", loaded.library.display());
        Ok(Runtime { loaded })
    }

    /// The shared library in use.
    pub fn library(&self) -> &Path {
        &self.loaded.library
    }

    /// ONNX Runtime's build description (version, commit).
    pub fn build_info(&self) -> String {
        ort::info().to_string()
    }

    fn session(&self, model: &Path, threads: usize) -> Result<Session> {
        if !model.is_file() {
            return Err(SegmentError::ModelMissing {
                path: model.to_path_buf(),
            });
        }
        let mut builder = Session::builder(&self.loaded.env)?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| SegmentError::Ort(e.to_string()))?;
        }
        builder
            .commit_from_file(model)
            .map_err(|e| SegmentError::Ort(format!("cannot load model {}: {e}", model.display())))
    }

    /// The inputs and outputs of an ONNX model.
    pub fn inspect(&self, model: &Path) -> Result<ModelInfo> {
        let session = self.session(model, 1)?;
        Ok(ModelInfo::of(&session))
    }

    /// Runs a float model on one input and returns one output's values, with no preset (for
    /// checks and tests).
    pub fn run_raw(
        &self,
        model: &Path,
        input: &str,
        shape: &[usize],
        data: Vec<f32>,
        output: &str,
    ) -> Result<Vec<f32>> {
        let mut session = self.session(model, 0)?;
        let tensor = Tensor::from_array((shape.to_vec(), data))?;
        let outputs = session.run(vec![(input, tensor)])?;
        let value = outputs
            .get(output)
            .ok_or_else(|| SegmentError::Ort(format!("model gave no output {output}")))?;
        Ok(value.try_extract_tensor::<f32>()?.1.to_vec())
    }

    /// Opens `model` (the preset's own when `None`) and checks it fits `preset`.
    pub fn open(&self, preset: &Preset, model: Option<&Path>, threads: usize) -> Result<Segmenter> {
        let path = match model.or(preset.model.as_deref()) {
            Some(p) => p.to_path_buf(),
            None => {
                return Err(SegmentError::NoModelFile {
                    preset: preset.name.clone(),
                    hint: preset
                        .weights
                        .clone()
                        .unwrap_or_else(|| "no source given".into()),
                })
            }
        };
        let session = self.session(&path, threads)?;
        let info = ModelInfo::of(&session);
        let check = check_fit(&info, preset).map_err(|message| SegmentError::ModelMismatch {
            path: path.clone(),
            preset: preset.name.clone(),
            message,
        })?;
        Ok(Segmenter {
            session,
            preset: preset.clone(),
            model: path,
            info,
            fit: check,
        })
    }
}

/// One model input or output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IoInfo {
    pub name: String,
    /// `None` for non-tensors; `-1` marks a dynamic dimension.
    pub shape: Option<Vec<i64>>,
    pub element: String,
    #[serde(skip)]
    pub is_f32: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
}

impl ModelInfo {
    fn of(session: &Session) -> Self {
        let io = |name: &str, t: &ValueType| IoInfo {
            name: name.to_string(),
            shape: t.tensor_shape().map(|s| s.iter().copied().collect()),
            element: match t.tensor_type() {
                Some(e) => format!("{e}"),
                None => format!("{t}"),
            },
            is_f32: t.tensor_type() == Some(TensorElementType::Float32),
        };
        Self {
            inputs: session
                .inputs()
                .iter()
                .map(|o| io(o.name(), o.dtype()))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| io(o.name(), o.dtype()))
                .collect(),
        }
    }
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[IoInfo]| {
            v.iter()
                .map(|i| match &i.shape {
                    Some(s) => format!("{} {}{:?}", i.name, i.element, s),
                    None => format!("{} {}", i.name, i.element),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "inputs: {}; outputs: {}",
            list(&self.inputs),
            list(&self.outputs)
        )
    }
}

/// What [`check_fit`] learnt: which input and output to use, and the batch size allowed.
#[derive(Debug, Clone)]
struct Fit {
    input: String,
    output: String,
    /// `None`: any batch size.
    fixed_batch: Option<usize>,
}

fn pick<'a>(
    list: &'a [IoInfo],
    wanted: Option<&str>,
    what: &str,
    info: &ModelInfo,
) -> Result<&'a IoInfo, String> {
    match wanted {
        Some(name) => list
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("the preset's {what} {name:?} is not in the model ({info})")),
        None => list
            .first()
            .ok_or_else(|| format!("the model has no {what}")),
    }
}

fn check_fit(info: &ModelInfo, preset: &Preset) -> Result<Fit, String> {
    let input = pick(&info.inputs, preset.input.name.as_deref(), "input", info)?;
    let output = pick(&info.outputs, preset.output.name.as_deref(), "output", info)?;
    let ishape = input
        .shape
        .as_ref()
        .ok_or_else(|| format!("input {} is a {}, not a tensor", input.name, input.element))?;
    if !input.is_f32 {
        return Err(format!(
            "input {} holds {}, not float32",
            input.name, input.element
        ));
    }
    if ishape.len() != 4 {
        return Err(format!(
            "input {} has rank {} ({ishape:?}); the preset feeds images as [N, 3, H, W]",
            input.name,
            ishape.len()
        ));
    }
    let [w, h] = preset.input.size;
    let want = [-1, 3, h as i64, w as i64];
    for (axis, (have, want)) in ishape.iter().zip(want).enumerate().skip(1) {
        if *have >= 0 && *have != want {
            return Err(format!(
                "input {} has shape {ishape:?} but the preset feeds [N, 3, {h}, {w}] (axis {axis}: {have} ≠ {want})",
                input.name
            ));
        }
    }
    let oshape = output.shape.as_ref().ok_or_else(|| {
        format!(
            "output {} is a {}, not a tensor",
            output.name, output.element
        )
    })?;
    if !output.is_f32 {
        return Err(format!(
            "output {} holds {}, not float32",
            output.name, output.element
        ));
    }
    match (preset.output.kind, oshape.len()) {
        (OutputKind::Logits, 4) => {
            let c = oshape[1];
            if let Some(&max) = preset.output.classes.iter().max() {
                if c >= 0 && max as i64 >= c {
                    return Err(format!(
                        "output {} has {c} classes ({oshape:?}); the preset picks class {max}",
                        output.name
                    ));
                }
            }
        }
        (OutputKind::Logits, r) => {
            return Err(format!(
                "output {} has rank {r} ({oshape:?}); logits must be [N, C, H, W]",
                output.name
            ))
        }
        (_, 3) => {}
        (_, 4) => {
            if oshape[1] >= 0 && oshape[1] != 1 {
                return Err(format!(
                    "output {} has {} channels ({oshape:?}); a {:?} output has one",
                    output.name, oshape[1], preset.output.kind
                ));
            }
        }
        (kind, r) => {
            return Err(format!(
            "output {} has rank {r} ({oshape:?}); a {kind:?} output is [N, 1, H, W] or [N, H, W]",
            output.name
        ))
        }
    }
    Ok(Fit {
        input: input.name.clone(),
        output: output.name.clone(),
        fixed_batch: (ishape[0] >= 0).then_some(ishape[0] as usize),
    })
}

/// A model checked against its preset, ready to segment images.
pub struct Segmenter {
    session: Session,
    preset: Preset,
    model: PathBuf,
    info: ModelInfo,
    fit: Fit,
}

impl Segmenter {
    pub fn preset(&self) -> &Preset {
        &self.preset
    }

    pub fn model_path(&self) -> &Path {
        &self.model
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The largest batch the model takes (`usize::MAX` when its batch axis is dynamic).
    pub fn max_batch(&self) -> usize {
        self.fit.fixed_batch.unwrap_or(usize::MAX)
    }

    /// The foreground maps (model resolution, 0..1) of a batch of prepared inputs.
    fn run_maps(&mut self, inputs: &[Vec<f32>]) -> Result<(Vec<Vec<f32>>, u32, u32)> {
        let [w, h] = self.preset.input.size;
        let n = inputs.len();
        let mut data = Vec::with_capacity(n * 3 * (w * h) as usize);
        for i in inputs {
            data.extend_from_slice(i);
        }
        let tensor = Tensor::from_array(([n, 3, h as usize, w as usize], data))?;
        let outputs = self.session.run(vec![(self.fit.input.as_str(), tensor)])?;
        let value = outputs.get(&self.fit.output).ok_or_else(|| {
            SegmentError::Ort(format!("model gave no output {}", self.fit.output))
        })?;
        let (shape, values) = value.try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let (channels, oh, ow) = match dims.as_slice() {
            [b, c, oh, ow] if *b == n => (*c, *oh, *ow),
            [b, oh, ow] if *b == n => (1, *oh, *ow),
            _ => {
                return Err(SegmentError::Ort(format!(
                    "output {} has shape {dims:?} for a batch of {n}",
                    self.fit.output
                )))
            }
        };
        if channels == 0 || oh == 0 || ow == 0 {
            return Err(SegmentError::Ort(format!(
                "output {} is empty: {dims:?}",
                self.fit.output
            )));
        }
        let per = channels * oh * ow;
        let maps = values
            .chunks(per)
            .take(n)
            .map(|v| post::output_to_map(v, channels, &self.preset.output))
            .collect();
        Ok((maps, ow as u32, oh as u32))
    }

    /// Masks (each at its image's size) for a batch of images; batches larger than the model
    /// takes are split.
    pub fn segment(&mut self, images: &[&RgbImage]) -> Result<Vec<GrayImage>> {
        let mut masks = Vec::with_capacity(images.len());
        let step = self.max_batch().max(1);
        for chunk in images.chunks(step) {
            let prepared: Vec<(Vec<f32>, Geometry)> = chunk
                .iter()
                .map(|img| imaging::prepare(img, &self.preset.input))
                .collect();
            let inputs: Vec<Vec<f32>> = prepared.iter().map(|(d, _)| d.clone()).collect();
            let (maps, mw, mh) = self.run_maps(&inputs)?;
            let [iw, ih] = self.preset.input.size;
            for (map, (_, geometry)) in maps.iter().zip(&prepared) {
                let map = imaging::resize_map(map, mw, mh, iw, ih);
                let full = imaging::map_back(&map, iw, ih, geometry);
                masks.push(post::finish(
                    &full,
                    geometry.width,
                    geometry.height,
                    &self.preset.post,
                ));
            }
        }
        Ok(masks)
    }
}
