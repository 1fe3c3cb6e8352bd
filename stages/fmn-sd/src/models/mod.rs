//! The networks of Stable Diffusion, with diffusers' (and transformers') weight names.
pub mod attention;
pub mod clip;
pub mod nn;
pub mod probes;
pub mod resnet;
pub mod unet;
pub mod vae;
