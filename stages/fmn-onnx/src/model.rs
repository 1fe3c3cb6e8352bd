//! An opened model ([`Model`]: its inputs and outputs, one run) and a model fed images
//! ([`ImageModel`]: one `[N, 3, H, W]` float input prepared by an [`InputSpec`], run in the
//! batches the model takes, its output split per image).
use crate::error::{OnnxError, Result};
use crate::input::{prepare_batch, Geometry, InputSpec};
use image::RgbImage;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use std::borrow::Borrow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// A model's inputs and outputs.
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

    /// The input called `wanted` (the first input when `None`).
    pub fn input(&self, wanted: Option<&str>) -> Result<&IoInfo, String> {
        self.pick(&self.inputs, wanted, "input")
    }

    /// The output called `wanted` (the first output when `None`).
    pub fn output(&self, wanted: Option<&str>) -> Result<&IoInfo, String> {
        self.pick(&self.outputs, wanted, "output")
    }

    fn pick<'a>(
        &self,
        list: &'a [IoInfo],
        wanted: Option<&str>,
        what: &str,
    ) -> Result<&'a IoInfo, String> {
        match wanted {
            Some(name) => list.iter().find(|i| i.name == name).ok_or_else(|| {
                format!("the preset's {what} {name:?} is not in the model ({self})")
            }),
            None => list
                .first()
                .ok_or_else(|| format!("the model has no {what}")),
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

/// An opened ONNX model. Runs take `&self` (one at a time).
pub struct Model {
    session: Mutex<Session>,
    path: PathBuf,
    info: ModelInfo,
}

impl Model {
    pub(crate) fn new(session: Session, path: PathBuf) -> Model {
        let info = ModelInfo::of(&session);
        Model {
            session: Mutex::new(session),
            path,
            info,
        }
    }

    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// One run with one float input: the output `output`'s shape and values.
    pub fn run(
        &self,
        input: &str,
        tensor: Tensor<f32>,
        output: &str,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(vec![(input, tensor)])?;
        let value = outputs
            .get(output)
            .ok_or_else(|| OnnxError::Ort(format!("the model gave no output `{output}`")))?;
        let (shape, values) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| OnnxError::Ort(format!("output `{output}`: {e}")))?;
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((shape, values.to_vec()))
    }
}

/// A model's output for a list of images, split per image.
#[derive(Debug, Clone)]
pub struct PerImage {
    /// The output's shape without its batch axis; `None` when there were no images.
    pub shape: Option<Vec<usize>>,
    /// One flat row of `shape.product()` values per image.
    pub rows: Vec<Vec<f32>>,
    /// Where each image lay in the model input.
    pub geometry: Vec<Geometry>,
}

/// A model fed images: its float input `[N, 3, H, W]` checked against the spec's size, the
/// output it is read from, and the batch size its input allows.
pub struct ImageModel {
    model: Model,
    spec: InputSpec,
    input: IoInfo,
    output: IoInfo,
    /// `None`: any batch size.
    fixed_batch: Option<usize>,
}

impl ImageModel {
    /// Picks the input and output (by name, else the first) and checks that the input is a
    /// float `[N, 3, H, W]` tensor of the spec's size and the output a float tensor.
    pub fn new(
        model: Model,
        spec: InputSpec,
        input: Option<&str>,
        output: Option<&str>,
    ) -> Result<ImageModel> {
        let mismatch = |message: String| OnnxError::Mismatch {
            path: model.path.clone(),
            message,
        };
        let info = &model.info;
        let input = info.input(input).map_err(mismatch)?.clone();
        let output = info.output(output).map_err(mismatch)?.clone();
        let fixed_batch = check_input(&input, &spec).map_err(mismatch)?;
        check_float(&output, "output").map_err(mismatch)?;
        Ok(ImageModel {
            model,
            spec,
            input,
            output,
            fixed_batch,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// The input fed.
    pub fn input(&self) -> &IoInfo {
        &self.input
    }

    /// The output read (its declared shape, `-1` for dynamic axes).
    pub fn output(&self) -> &IoInfo {
        &self.output
    }

    /// The batch size the model requires, when its input's first axis is fixed.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// The largest batch the model takes (`usize::MAX` when its batch axis is dynamic).
    pub fn max_batch(&self) -> usize {
        self.fixed_batch.unwrap_or(usize::MAX)
    }

    /// The model input for `images` ([`prepare_batch`] with this model's spec).
    pub fn prepare<I: Borrow<RgbImage>>(&self, images: &[I]) -> (Vec<f32>, Vec<Geometry>) {
        prepare_batch(images, &self.spec)
    }

    /// Runs the model on `images`, `batch` at a time when its batch axis is dynamic (a fixed
    /// axis takes its own size, the last run padded with zeros); checks that every run gives
    /// one output per image, all of the same shape.
    pub fn run<I: Borrow<RgbImage>>(&self, images: &[I], batch: usize) -> Result<PerImage> {
        let batch = self.fixed_batch.unwrap_or(batch).max(1);
        let mut out = PerImage {
            shape: None,
            rows: Vec::with_capacity(images.len()),
            geometry: Vec::with_capacity(images.len()),
        };
        for chunk in images.chunks(batch) {
            let n = self.fixed_batch.unwrap_or(chunk.len());
            let (mut data, geometry) = self.prepare(chunk);
            let [w, h] = self.spec.size;
            data.resize(n * self.spec.values_per_image(), 0.0);
            let tensor = Tensor::from_array(([n, 3, h as usize, w as usize], data))?;
            let (full, values) = self
                .model
                .run(&self.input.name, tensor, &self.output.name)?;
            let name = &self.output.name;
            if full.first() != Some(&n) {
                return Err(OnnxError::Ort(format!(
                    "output `{name}` has shape {full:?}; expected {n} images on its first axis"
                )));
            }
            let shape = full[1..].to_vec();
            if let Some(s) = &out.shape {
                if *s != shape {
                    return Err(OnnxError::Ort(format!(
                        "output `{name}` changed shape between batches: {s:?} then {shape:?} per image"
                    )));
                }
            }
            let per: usize = shape.iter().product();
            out.rows.extend(
                values
                    .chunks(per.max(1))
                    .take(chunk.len())
                    .map(<[f32]>::to_vec),
            );
            out.geometry.extend(geometry);
            out.shape = Some(shape);
        }
        Ok(out)
    }
}

fn check_float(io: &IoInfo, what: &str) -> Result<(), String> {
    if io.shape.is_none() {
        return Err(format!(
            "{what} {} is a {}, not a tensor",
            io.name, io.element
        ));
    }
    if !io.is_f32 {
        return Err(format!(
            "{what} {} holds {}, not float32",
            io.name, io.element
        ));
    }
    Ok(())
}

/// Checks the input against `[N, 3, H, W]` of the spec; returns the batch size when it is
/// fixed.
fn check_input(input: &IoInfo, spec: &InputSpec) -> Result<Option<usize>, String> {
    check_float(input, "input")?;
    let shape = input.shape.as_deref().unwrap_or_default();
    if shape.len() != 4 {
        return Err(format!(
            "input {} has rank {} ({shape:?}); images are fed as [N, 3, H, W]",
            input.name,
            shape.len()
        ));
    }
    let [w, h] = spec.size;
    let want = [-1, 3, h as i64, w as i64];
    for (axis, (have, want)) in shape.iter().zip(want).enumerate().skip(1) {
        if *have >= 0 && *have != want {
            return Err(format!(
                "input {} has shape {shape:?} but the preset feeds [N, 3, {h}, {w}] (axis {axis}: {have} ≠ {want}; input.size is [width, height])",
                input.name
            ));
        }
    }
    Ok((shape[0] > 0).then_some(shape[0] as usize))
}
