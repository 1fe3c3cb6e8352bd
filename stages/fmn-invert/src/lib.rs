//! `fmn-invert`: textual inversion — learns new token embeddings that stand for a concept shown
//! in a few images (the first stage of Forget-Me-Not's `use_ti`), with masks to keep the
//! background from driving them. The inversion itself is the `fmn-inversion` library.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod cli;

pub use fmn_inversion::{config, init, train};
pub use fmn_inversion::{invert, InvertConfig, InvertError, Inverted, Kind};
