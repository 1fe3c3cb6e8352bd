//! `fmn-resteer`: attention re-steering (Forget-Me-Not) — fine-tunes UNet weights so that the
//! cross-attention on a concept's tokens goes to zero, and returns the change as deltas for a
//! patch file.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod adversary;
pub mod cli;
pub mod config;
pub mod harden;
pub mod loss;
pub mod params;
pub mod preserve;
pub mod prior;
pub mod prompts;
pub mod sibling;
pub mod solve;
pub mod train;

pub use config::{ConceptKind, ConceptSpec, ParamSet, ResteerConfig};
pub use train::{resteer, Model, Resteered};

/// The stage's errors: the training scaffold's (bad input, divergence, model errors).
pub use fmn_sd::train::scaffold::TrainError as ResteerError;
