//! What the fmn-resteer tests share.
#![allow(dead_code, clippy::unwrap_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::StableDiffusion;

/// `Σ_layers ‖C Δᵀ‖²` over the contexts `C` of `prompt` and the patch's K/V deltas.
pub fn moved(sd: &StableDiffusion, patch: &Patch, prompt: &str) -> f32 {
    let ids = sd.tokenizer.encode(prompt).unwrap();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ctx = sd.text_encoder.forward(&ids).unwrap().squeeze(0).unwrap();
    patch
        .deltas
        .values()
        .map(|d| {
            let d = d.to_dtype(DType::F32).unwrap();
            ctx.matmul(&d.t().unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .sum()
}
