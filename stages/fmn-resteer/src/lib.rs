//! `fmn-resteer`: attention re-steering (Forget-Me-Not) — fine-tunes UNet weights so that the
//! cross-attention on a concept's tokens goes to zero, and returns the change as deltas for a
//! patch file.
pub mod cli;
pub mod config;
pub mod loss;
pub mod params;
pub mod prompts;
pub mod solve;
pub mod train;

pub use config::{ConceptKind, ConceptSpec, ParamSet, ResteerConfig};
pub use fmn_sd::train::checkpoint::RunOptions;
pub use train::{resteer, Model, ResteerReport, Resteered};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ResteerError {
    #[error("{0}")]
    Input(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the loss became {value} at step {step}; nothing was written (try a smaller learning rate)"
    )]
    Diverged { step: usize, value: f64 },
    #[error(transparent)]
    Model(#[from] fmn_sd::SdError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ResteerError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
