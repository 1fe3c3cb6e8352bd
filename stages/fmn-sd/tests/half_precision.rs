//! Loading and computing in f16 / bf16 (what `--dtype` asks for on a GPU), checked on the CPU
//! against diffusers' f32 outputs of the tiny fixtures: text encoder, UNet (with its
//! cross-attention probabilities, whose softmax runs in f32) and VAE decoder.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_testkit::{fixtures, max_abs_diff, reference, rel_err};

use candle_core::{DType, Device};
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::sample::pipeline::{SampleRequest, StableDiffusion};
use fmn_sd::sample::scheduler::SamplerKind;

/// `tol`: relative error of the text encoder, UNet and decoder outputs; `prob_tol`: absolute
/// error of the attention probabilities (the rounding of every layer before them adds up).
fn check(name: &str, dtype: DType, tol: f32, prob_tol: f32) {
    let r = reference(name);
    let dev = Device::Cpu;
    let sd = StableDiffusion::load(&fixtures().join(name), &dev, dtype).unwrap();
    let cast = |k: &str| r[k].to_dtype(dtype).unwrap();

    let ids = r["prompt_ids"].to_dtype(DType::U32).unwrap();
    let hidden = sd.text_encoder.forward(&ids).unwrap();
    assert_eq!(hidden.dtype(), dtype);
    let e = rel_err(&hidden, &r["text_hidden"]);
    assert!(e < tol, "{name} {dtype:?} text encoder: relative error {e}");

    let t = r["unet_timestep"].to_dtype(DType::F32).unwrap();
    let rec = AttentionRecorder::new();
    let out = sd
        .unet
        .forward_with_probe(&cast("unet_sample"), &t, &cast("unet_context"), Some(&rec))
        .unwrap();
    assert_eq!(out.dtype(), dtype);
    let e = rel_err(&out, &r["unet_out"]);
    assert!(e < tol, "{name} {dtype:?} UNet: relative error {e}");
    let probs = rec.take();
    assert!(!probs.is_empty());
    for rec in &probs {
        let key = format!("attn_probs/{}", rec.path);
        let e = max_abs_diff(&rec.probs, &r[key.as_str()]);
        assert!(e < prob_tol, "{name} {dtype:?} {key}: max error {e}");
    }

    let decoded = sd.vae.decode(&cast("vae_mean")).unwrap();
    let e = rel_err(&decoded, &r["vae_decoded"]);
    assert!(e < tol, "{name} {dtype:?} VAE decoder: relative error {e}");

    // A whole 10-step DDIM run with guidance: f32 latents out, the networks in `dtype`.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{name}-reference.json"))).unwrap(),
    )
    .unwrap();
    let out = sd
        .sample(
            &SampleRequest {
                prompt: meta["run_prompt"].as_str().unwrap(),
                negative_prompt: meta["negative_prompt"].as_str().unwrap(),
                sampler: SamplerKind::Ddim,
                steps: meta["num_inference_steps"].as_u64().unwrap() as usize,
                guidance: meta["guidance_scale"].as_f64().unwrap(),
                guidance_rescale: 0.0,
                init_noise: r["init_latents"].clone(),
                attention_steps: &[],
                step_seed: 0,
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(out.latents.dtype(), DType::F32);
    let e = rel_err(&out.latents, &r["ddim_latents"]);
    assert!(
        e < 2.0 * tol,
        "{name} {dtype:?} DDIM run: relative error {e}"
    );
    let image = sd.decode(&out.latents).unwrap();
    assert_eq!(image.dtype(), DType::F32);
    let e = max_abs_diff(&image, &r["ddim_image"]);
    assert!(e < 2.0 * tol, "{name} {dtype:?} DDIM image: max error {e}");
}

#[test]
fn sd1_in_f16_and_bf16_matches_diffusers_f32() {
    check("sd1-tiny", DType::F16, 1e-2, 2e-2);
    check("sd1-tiny", DType::BF16, 5e-2, 1e-1);
}

#[test]
fn sd2_in_f16_and_bf16_matches_diffusers_f32() {
    check("sd2-tiny", DType::F16, 1e-2, 2e-2);
    check("sd2-tiny", DType::BF16, 5e-2, 1e-1);
}
