//! `fmn-invert`: textual inversion — learns new token embeddings that stand for a concept shown
//! in a few images (the first stage of Forget-Me-Not's `use_ti`), with masks to keep the
//! background from driving them.
pub mod cli;
pub mod config;
pub mod init;
pub mod train;

pub use config::{InvertConfig, Kind};
pub use fmn_sd::train::checkpoint::RunOptions;
pub use train::{invert, InvertReport, Inverted};

#[derive(Debug, thiserror::Error)]
pub enum InvertError {
    #[error("{0}")]
    Input(String),
    #[error(
        "the loss became {value} at step {step}; nothing was written (try a smaller learning rate)"
    )]
    Diverged { step: usize, value: f64 },
    #[error(transparent)]
    Model(#[from] fmn_sd::SdError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
