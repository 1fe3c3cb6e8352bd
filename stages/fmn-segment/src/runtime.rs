//! Segmentation models: ONNX Runtime (fmn-onnx's, [`Runtime`]) and models checked against
//! their presets ([`Segmenter`]).
use crate::error::{Result, SegmentError};
use crate::imaging;
use crate::post;
use crate::preset::{OutputKind, Preset};
use fmn_onnx::{ImageModel, IoInfo, ModelInfo, OnnxError};
use image::{GrayImage, RgbImage};
use std::path::Path;

/// ONNX Runtime ([`fmn_onnx::Runtime`], which it dereferences to), opening segmenters.
#[derive(Clone, Copy)]
pub struct Runtime(fmn_onnx::Runtime);

impl std::ops::Deref for Runtime {
    type Target = fmn_onnx::Runtime;
    fn deref(&self) -> &fmn_onnx::Runtime {
        &self.0
    }
}

impl Runtime {
    /// Loads ONNX Runtime from `explicit` (`--ort-lib`), else from `ORT_DYLIB_PATH`.
    pub fn load(explicit: Option<&Path>) -> Result<Runtime> {
        Ok(Runtime(fmn_onnx::Runtime::load(explicit)?))
    }

    /// Opens `model` (the preset's own when `None`) and checks it fits `preset`.
    pub fn open(&self, preset: &Preset, model: Option<&Path>, threads: usize) -> Result<Segmenter> {
        Segmenter::open(&self.0, preset, model, threads)
    }
}

/// A model checked against its preset, ready to segment images.
pub struct Segmenter {
    model: ImageModel,
    preset: Preset,
}

impl Segmenter {
    /// Opens `model` (the preset's own when `None`) and checks it fits `preset`.
    pub fn open(
        rt: &fmn_onnx::Runtime,
        preset: &Preset,
        model: Option<&Path>,
        threads: usize,
    ) -> Result<Segmenter> {
        let Some(path) = model.or(preset.model.as_deref()) else {
            return Err(SegmentError::NoModelFile {
                preset: preset.name.clone(),
                hint: preset
                    .weights
                    .clone()
                    .unwrap_or_else(|| "no source given".into()),
            });
        };
        let mismatch = |message: String| SegmentError::ModelMismatch {
            path: path.to_path_buf(),
            preset: preset.name.clone(),
            message,
        };
        let opened = rt.open(path, threads)?;
        let model = ImageModel::new(
            opened,
            preset.input.spec.clone(),
            preset.input.name.as_deref(),
            preset.output.name.as_deref(),
        )
        .map_err(|e| match e {
            OnnxError::Mismatch { message, .. } => mismatch(message),
            e => e.into(),
        })?;
        check_output(model.output(), preset).map_err(mismatch)?;
        Ok(Segmenter {
            model,
            preset: preset.clone(),
        })
    }

    pub fn preset(&self) -> &Preset {
        &self.preset
    }

    pub fn model_path(&self) -> &Path {
        self.model.model().path()
    }

    pub fn info(&self) -> &ModelInfo {
        self.model.model().info()
    }

    /// The largest batch the model takes (`usize::MAX` when its batch axis is dynamic).
    pub fn max_batch(&self) -> usize {
        self.model.max_batch()
    }

    /// Masks (each at its image's size) for a batch of images; batches larger than the model
    /// takes are split.
    pub fn segment(&mut self, images: &[&RgbImage]) -> Result<Vec<GrayImage>> {
        let out = self.model.run(images, usize::MAX)?;
        let name = &self.model.output().name;
        let (channels, oh, ow) = match out.shape.as_deref() {
            None => return Ok(Vec::new()),
            Some(&[c, oh, ow]) => (c, oh, ow),
            Some(&[oh, ow]) => (1, oh, ow),
            Some(s) => {
                return Err(SegmentError::Output(format!(
                    "{name} gives {s:?} per image; expected [C, H, W] or [H, W]"
                )))
            }
        };
        if channels == 0 || oh == 0 || ow == 0 {
            return Err(SegmentError::Output(format!(
                "{name} is empty: {:?} per image",
                [channels, oh, ow]
            )));
        }
        let [iw, ih] = self.preset.input.size;
        let post = &self.preset.post;
        Ok(out
            .rows
            .iter()
            .zip(&out.geometry)
            .map(|(row, geometry)| {
                let map = post::output_to_map(row, channels, &self.preset.output);
                let map = imaging::resize_map(&map, ow as u32, oh as u32, iw, ih);
                let full = imaging::map_back(&map, iw, ih, geometry);
                post::finish(&full, geometry.width, geometry.height, post)
            })
            .collect())
    }
}

/// Checks the model's output against the preset's output kind.
fn check_output(output: &IoInfo, preset: &Preset) -> Result<(), String> {
    let oshape = output.shape.as_deref().unwrap_or_default();
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
    Ok(())
}
