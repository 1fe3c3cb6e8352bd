//! Textual inversion as a library: learns new token embeddings that stand for a concept shown
//! in a few images, with masks to keep the background from driving them. The `fmn-invert`
//! stage is its command line; `fmn-attack` and `fmn-resteer --harden` run it on patched models.
pub mod config;
pub mod init;
pub mod train;

pub use config::{InvertConfig, Kind};
pub use train::{invert, Inverted};

/// The inversion's errors: the training scaffold's (bad input, divergence, model errors).
pub use fmn_sd::train::scaffold::TrainError as InvertError;
