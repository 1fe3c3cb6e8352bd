//! A differentiable Stable Diffusion (1.x / 2.x) in candle, loaded from diffusers folders.
//!
//! Every module follows diffusers' weight names, so `Module::new(vb.pp("down_blocks.0"), ..)`
//! reads the same tensors diffusers would. All ops used here have a backward pass in candle:
//! softmax and layer norm are written out in [`nn`] instead of using the fused kernels, which
//! silently drop gradients.

pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod conv;
mod cpu_op;
pub mod device;
pub mod embedding;
pub mod error;
pub mod frozen_matmul;
pub mod fused_attention;
pub mod group_norm;
pub mod init;
pub mod nn;
pub mod noise;
pub mod optim;
pub mod patch;
pub mod pipeline;
pub mod probes;
pub mod resnet;
pub mod row_affine;
pub mod sampling_defaults;
pub mod scheduler;
pub mod single_file;
pub mod source;
pub mod tokenizer;
pub mod training_images;
pub mod unet;
pub mod vae;
pub mod weights;

pub use error::{Result, SdError};
