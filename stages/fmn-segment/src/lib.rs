//! `fmn-segment`: concept masks (which pixels are the concept) from ONNX segmentation models
//! run through ONNX Runtime (the `ort` crate, loading the runtime library at run time).
//!
//! - [`preset`]: YAML presets describing a model's input, output and mask post-processing;
//! - [`runtime`]: ONNX Runtime (fmn-onnx's, [`Runtime`]) and models checked against a preset
//!   ([`Segmenter`]);
//! - [`imaging`] and [`post`]: reading images, and from the model's output to a mask (the
//!   model input is fmn-onnx's [`fmn_onnx::prepare`]);
//! - [`batch`]: a folder of images to a folder of masks, overlays and a manifest;
//! - [`cli`]: the `fmn-segment` command line.
//!
//! The toy segmenter's training and the ONNX writer it is exported with are `fmn-toy`'s
//! (`fmn-toy train-segmenter`); `eval` reads render folders through `fmn-toy-world`.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod batch;
pub mod cli;
pub mod error;
pub mod imaging;
pub mod post;
pub mod preset;
pub mod runtime;

pub use batch::{segment_folder, FolderJob, Manifest};
pub use error::{Result, SegmentError};
pub use preset::Preset;
pub use runtime::{Runtime, Segmenter};
