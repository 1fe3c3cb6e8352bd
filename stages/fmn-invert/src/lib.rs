//! `fmn-invert`: textual inversion — learns new token embeddings that stand for a concept shown
//! in a few images (the first stage of Forget-Me-Not's `use_ti`), with masks to keep the
//! background from driving them.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod cli;
pub mod config;
pub mod init;
pub mod train;

pub use config::{InvertConfig, Kind};
pub use train::{invert, Inverted};

/// The stage's errors: the training scaffold's (bad input, divergence, model errors).
pub use fmn_sd::train::scaffold::TrainError as InvertError;
