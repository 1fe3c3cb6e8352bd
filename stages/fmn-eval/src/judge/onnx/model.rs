//! ONNX Runtime (loaded at run time from `ORT_DYLIB_PATH`), one model session, and feeding it
//! images: resized, scaled to 0..1, normalised, NCHW, in batches the model accepts.
use super::preset::{InputSpec, OnnxPreset};
use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use image::RgbImage;
use ort::session::Session;
use ort::value::{Tensor, ValueType};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Images per run when the model's batch size is dynamic.
const BATCH: usize = 32;

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

/// The model's output for a list of images, split per image.
#[derive(Debug, Clone)]
pub struct PerImage {
    /// The output's shape without its batch axis; `None` when there were no images.
    pub shape: Option<Vec<usize>>,
    /// One flat row of `shape.product()` values per image.
    pub rows: Vec<Vec<f32>>,
}

/// A loaded model, the input and output it uses, and how it is fed.
pub struct Model {
    session: Mutex<Session>,
    spec: InputSpec,
    pub input: String,
    pub output: String,
    /// The output's declared shape (`-1`: dynamic), when the model declares one.
    pub output_shape: Option<Vec<i64>>,
    /// The batch size the model requires, when its input's first axis is fixed.
    fixed_batch: Option<usize>,
}

fn shape_of(t: &ValueType) -> Option<Vec<i64>> {
    t.tensor_shape().map(|s| s.iter().copied().collect())
}

impl Model {
    /// Loads the preset's model and checks its input against the preset's `input.size`.
    pub fn load(preset: &OnnxPreset) -> Result<Model> {
        let file = preset.path.display();
        let env = environment()?;
        if !preset.model.is_file() {
            bail!(
                "judge preset {file}: no model file {}",
                preset.model.display()
            );
        }
        let session = Session::builder(env)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .commit_from_file(&preset.model)
            .map_err(|e| {
                anyhow::anyhow!("cannot load the ONNX model {}: {e}", preset.model.display())
            })?;
        let pick = |list: &[ort::value::Outlet], wanted: &Option<String>, what: &str| {
            let found = match wanted {
                Some(n) => list.iter().find(|o| o.name() == n),
                None => list.first(),
            };
            found
                .map(|o| (o.name().to_string(), shape_of(o.dtype())))
                .with_context(|| {
                    let names: Vec<&str> = list.iter().map(|o| o.name()).collect();
                    format!(
                        "judge preset {file}: the model {} has no {what} {} (its {what}s: {})",
                        preset.model.display(),
                        wanted.as_deref().unwrap_or(""),
                        names.join(", ")
                    )
                })
        };
        let (input, input_shape) = pick(session.inputs(), &preset.input_name, "input")?;
        let (output, output_shape) = pick(session.outputs(), &preset.output_name, "output")?;
        let fixed_batch = check_input(preset, &input, input_shape.as_deref())?;
        Ok(Model {
            session: Mutex::new(session),
            spec: preset.input.clone(),
            input,
            output,
            output_shape,
            fixed_batch,
        })
    }

    /// The model input for `images`: resized, scaled to 0..1, normalised, NCHW.
    pub fn prepare(&self, images: &[RgbImage]) -> Vec<f32> {
        prepare(&self.spec, images)
    }

    /// Runs the model on `images` in batches it accepts; checks that every batch gives one
    /// output per image, all of the same shape.
    pub fn run(&self, images: &[RgbImage]) -> Result<PerImage> {
        let batch = self.fixed_batch.unwrap_or(BATCH).max(1);
        let mut out = PerImage {
            shape: None,
            rows: Vec::with_capacity(images.len()),
        };
        for chunk in images.chunks(batch) {
            let (shape, values) = self.run_batch(chunk, self.fixed_batch.unwrap_or(chunk.len()))?;
            let per: usize = shape.iter().product();
            if let Some(s) = &out.shape {
                if *s != shape {
                    bail!(
                        "output `{}` changed shape between batches: {s:?} then {shape:?} per image",
                        self.output
                    );
                }
            }
            out.rows.extend(
                values
                    .chunks(per.max(1))
                    .take(chunk.len())
                    .map(<[f32]>::to_vec),
            );
            out.shape = Some(shape);
        }
        Ok(out)
    }

    /// One run on `images` padded with blank images to `n`: the per-image output shape and
    /// all values.
    fn run_batch(&self, images: &[RgbImage], n: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let [w, h] = self.spec.size;
        let mut data = self.prepare(images);
        data.resize(n * 3 * (w * h) as usize, 0.0);
        let tensor = Tensor::from_array(([n, 3, h as usize, w as usize], data))
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
        if shape.first().map(|&d| d as usize) != Some(n) {
            bail!(
                "output `{}` has shape {:?}; expected {n} images on its first axis",
                self.output,
                &shape[..]
            );
        }
        let per = shape[1..].iter().map(|&d| d.max(0) as usize).collect();
        Ok((per, values.to_vec()))
    }
}

/// Checks the model's declared input shape against `[N, 3, H, W]` of the preset; returns the
/// batch size when it is fixed.
fn check_input(preset: &OnnxPreset, name: &str, shape: Option<&[i64]>) -> Result<Option<usize>> {
    let Some(shape) = shape else {
        bail!(
            "judge preset {}: input `{name}` of {} is not a tensor",
            preset.path.display(),
            preset.model.display()
        );
    };
    let [w, h] = preset.input.size;
    let want = [-1, 3, h as i64, w as i64];
    let fits = shape.len() == 4
        && shape
            .iter()
            .zip(want)
            .skip(1)
            .all(|(&have, want)| have < 0 || have == want);
    if !fits {
        bail!(
            "judge preset {}: input `{name}` of {} has shape {shape:?}, but the preset feeds \
             [N, 3, {h}, {w}] (input.size is [width, height])",
            preset.path.display(),
            preset.model.display()
        );
    }
    Ok((shape[0] > 0).then_some(shape[0] as usize))
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
