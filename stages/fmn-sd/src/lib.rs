//! A differentiable Stable Diffusion (1.x / 2.x) in candle, loaded from diffusers folders or
//! single-file checkpoints. Grouped by what each part is:
//!
//! - [`models`]: the networks (CLIP text encoder, UNet, VAE) in candle's model-file style —
//!   a config read from the component's `config.json`, `Module::new(vb, &cfg)`, diffusers'
//!   weight names — with probes on the cross-attention;
//! - [`io`]: files and formats (weights, single-file checkpoints, model sources, patches,
//!   learned-token embeddings, the CLIP tokenizer);
//! - [`sample`]: the schedulers and the text-to-image pipeline;
//! - `train` (feature `train`, on by default): what training runs share (the training scaffold,
//!   AdamW, the noise schedule, training images, checkpoints).
//!
//! Every op has a working backward pass: the kernels with their own backward live in
//! `fmn-ops`, and candle's fused softmax and layer norm (which silently drop gradients) are
//! never used.
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod device;
pub mod error;
pub mod io;
pub mod memory;
pub mod models;
pub mod sample;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Result, SdError};
