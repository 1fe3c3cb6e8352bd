//! The typed errors of the model library.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file ({message})")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: {source}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A patch file that cannot be read as an `fmn-patch/1` file.
    #[error("{path}: {message}")]
    Patch { path: PathBuf, message: String },
    /// Patches that do not fit the model (or each other) they are applied to or merged with.
    #[error("{0}")]
    PatchMismatch(String),
    /// A training step's gradient norm (or loss) is not finite.
    #[error("the gradient norm is {0}: the loss diverged (try a lower learning rate)")]
    NonFiniteGradient(f64),
    /// A request whose estimated peak memory exceeds what the machine (or `--max-memory`)
    /// gives, refused before anything is loaded.
    #[error(transparent)]
    TooLarge(fmn_core::memory::TooLarge),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, SdError>;

impl SdError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SdError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn patch(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        SdError::Patch {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        SdError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
