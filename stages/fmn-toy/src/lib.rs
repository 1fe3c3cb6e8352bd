//! `fmn-toy`: the toy world's trainers and the `fmn-toy` command line.
//!
//! - [`train`]: the toy Stable Diffusion (VAE, then text encoder + UNet, then the decoder),
//!   trained on the toy world's renders (`fmn-toy train`);
//! - [`quality`]: a toy model measured against the quality bar with the judge
//!   (`fmn-toy quality`);
//! - [`segmenter`]: the toy segmenter, a small CNN finding the figure, trained with candle and
//!   exported to ONNX by [`onnx`], a minimal ONNX writer (`fmn-toy train-segmenter`);
//! - [`cli`]: the command line, which also renders sets, judges images and trains the judge
//!   through [`fmn_toy_world`], the world itself (scenes, renderer, captions, judge).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod cli;
pub mod onnx;
pub mod quality;
pub mod segmenter;
pub mod train;
