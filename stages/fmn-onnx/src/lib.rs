//! `fmn-onnx`: ONNX Runtime for the stages that run ONNX models (fmn-segment's segmenters,
//! fmn-eval's judges).
//!
//! - [`Runtime`]: the ONNX Runtime shared library, loaded at run time from `--ort-lib PATH`
//!   or `ORT_DYLIB_PATH` (one per process); errors say how to get it ([`ORT_HELP`]);
//! - [`Model`]: an opened ONNX file, its inputs and outputs ([`ModelInfo`]) and one run;
//! - [`ImageModel`]: a model fed images through an [`InputSpec`], in the batches its input
//!   allows, its output split per image ([`PerImage`]);
//! - [`InputSpec`] and [`prepare`]: the preset's `input:` keys (size, resize mode, filter,
//!   channel order, value range, mean/std, letterbox padding) and the one implementation of
//!   them, including OpenCV's bilinear resize ([`resize_linear`]) for models fed as
//!   `cv2.dnn.blobFromImage` feeds them (NudeNet);
//! - [`Geometry`]: where an image lay in the input, and the [`AxisMap`]s back to its pixels.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod cv_linear;
pub mod error;
pub mod geometry;
pub mod input;
pub mod model;
pub mod runtime;

pub use cv_linear::{resize_linear, resize_linear_padded};
pub use error::{OnnxError, Result, ORT_HELP};
pub use geometry::{AxisMap, Geometry, Placement};
pub use input::{
    planes, prepare, prepare_batch, prepare_pixels, ChannelOrder, Filter, InputSpec, ResizeMode,
    ValueRange, RECIPROCAL_255,
};
pub use model::{ImageModel, IoInfo, Model, ModelInfo, PerImage};
pub use runtime::{library_path, Runtime, ORT_ENV};
