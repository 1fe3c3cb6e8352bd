//! The errors of loading ONNX Runtime, opening models and running them.
use std::path::PathBuf;

/// How to get the ONNX Runtime library; appended to every runtime-loading error.
pub const ORT_HELP: &str = "fmn needs the ONNX Runtime 1.31 (or newer) shared library: run \
`scripts/install-onnxruntime.sh` (it fetches the onnxruntime 1.31 wheel with pip, unpacks the library \
into .cache/onnxruntime and prints its path), then set ORT_DYLIB_PATH to that libonnxruntime.so.* file or pass --ort-lib PATH";

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("no ONNX Runtime library given: ORT_DYLIB_PATH is not set and no --ort-lib was passed. {ORT_HELP}")]
    RuntimeNotConfigured,
    #[error("ONNX Runtime library {path} does not exist. {ORT_HELP}")]
    RuntimeMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime from {path}: {message}. {ORT_HELP}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("model {path} does not exist")]
    ModelMissing { path: PathBuf },
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    /// The model's inputs or outputs do not fit how it is fed (names, element type, shape).
    #[error("model {path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("ONNX Runtime error: {0}")]
    Ort(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<ort::Error> for OnnxError {
    fn from(e: ort::Error) -> Self {
        OnnxError::Ort(e.to_string())
    }
}

pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
