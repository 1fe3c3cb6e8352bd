//! The errors of the segmentation library.
use std::path::PathBuf;

/// How to get the ONNX Runtime library; appended to every runtime-loading error.
pub const ORT_HELP: &str = "fmn-segment needs the ONNX Runtime 1.31 (or newer) shared library: run \
`scripts/install-onnxruntime.sh` (it fetches the onnxruntime 1.31 wheel with pip, unpacks the library \
into .cache/onnxruntime and prints its path), then set ORT_DYLIB_PATH to that libonnxruntime.so.* file or pass --ort-lib PATH";

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("no ONNX Runtime library given: ORT_DYLIB_PATH is not set and no --ort-lib was passed. {ORT_HELP}")]
    RuntimeNotConfigured,
    #[error("ONNX Runtime library {path} does not exist. {ORT_HELP}")]
    RuntimeMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime from {path}: {message}. {ORT_HELP}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("ONNX Runtime error: {0}")]
    Ort(String),

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
    #[error("preset {preset:?} names no ONNX file (its weights are not shipped: {hint}); pass --model MODEL.onnx --preset {preset}")]
    NoModelFile { preset: String, hint: String },
    #[error("model {path} does not exist")]
    ModelMissing { path: PathBuf },
    #[error("model {path} does not fit preset {preset:?}: {message}")]
    ModelMismatch {
        path: PathBuf,
        preset: String,
        message: String,
    },

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

impl From<ort::Error> for SegmentError {
    fn from(e: ort::Error) -> Self {
        SegmentError::Ort(e.to_string())
    }
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
