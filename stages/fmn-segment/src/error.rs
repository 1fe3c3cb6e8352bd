//! The errors of the segmentation library.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// Loading ONNX Runtime, opening or running a model.
    #[error(transparent)]
    Onnx(#[from] fmn_onnx::OnnxError),

    #[error(transparent)]
    Config(#[from] fmn_core::ConfigError),
    #[error("preset {path}: {message}")]
    Preset { path: PathBuf, message: String },
    #[error("no preset named {name:?}: looked for {looked}; built-in presets: {known}")]
    UnknownPreset {
        name: String,
        looked: String,
        known: String,
    },
    #[error("preset {preset:?} names no ONNX file (its weights are not shipped: {hint}); pass --segmenter MODEL.onnx --preset {preset}")]
    NoModelFile { preset: String, hint: String },
    #[error("model {path} does not fit preset {preset:?}: {message}")]
    ModelMismatch {
        path: PathBuf,
        preset: String,
        message: String,
    },
    #[error("model output: {0}")]
    Output(String),

    #[error("cannot read image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SegmentError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SegmentError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = SegmentError> = std::result::Result<T, E>;
