//! UNet forward / forward+backward at Stable Diffusion 1.5 size with random weights: prints
//! wall time per iteration and the process's peak resident memory (VmHWM).
//!
//! One configuration per process, so that peak memory belongs to it alone:
//! `cargo bench -p fmn-sd --bench sd_step -- --size 256 --mode forward|all|ca|ti|decode|encode
//! [--iters N] [--batch B] [--device cpu|cuda[:N]]` (`forward`: a UNet forward without gradients, as a sampling step;
//! `all`: gradients for every UNet weight; `ca`: only the cross-attention `attn2` weights, as
//! re-steering with `only_optimize_ca`; `ti`: a textual-inversion step, gradients for two token
//! rows through the frozen UNet and text encoder; `decode` / `encode`: the SD VAE alone, as
//! sampling's last step and a training stage's first). Each line also prints the peak that
//! `fmn_sd::memory` estimates for the run, as the stages' pre-flight check makes it.
//! `profile.sh` runs it under `perf` from the second iteration on.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::random_weights;
use fmn_sd::memory::{self, Workload};
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};
use fmn_sd::models::vae::{AutoencoderKL, AutoencoderKLConfig};
use std::time::Instant;

mod common;

fn sd15_config() -> UNetConfig {
    // runwayml/stable-diffusion-v1-5 unet/config.json (the keys that differ from defaults).
    serde_json::from_value(serde_json::json!({
        "sample_size": 64,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "layers_per_block": 2,
        "norm_num_groups": 32
    }))
    .expect("valid config")
}

/// SD 1.5's `vae/config.json` (the keys that differ from defaults).
fn sd15_vae_config() -> AutoencoderKLConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 512
    }))
    .expect("valid config")
}

/// The VAE alone: `decode` latents of `size`² images, or `encode` the images.
fn vae_step(
    dev: &Device,
    size: usize,
    mode: &str,
    iters: usize,
    batch: usize,
) -> candle_core::Result<()> {
    let dev = dev.clone();
    let cfg = sd15_vae_config();
    // Random weights through a VarMap, then plain tensors (as loaded from a file): with the
    // VarMap's variables the forward would keep its whole graph for a backward.
    let tensors = random_weights(&dev, |vb| AutoencoderKL::new(vb, &cfg).map(drop))?;
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    let vae = AutoencoderKL::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &cfg)?;
    let f = vae.downscale_factor();
    let mut times = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        if mode == "decode" {
            let z = Tensor::randn(0f32, 1f32, (batch, 4, size / f, size / f), &dev)?;
            vae.decode(&z).map_err(candle_core::Error::wrap)?;
        } else {
            let x = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &dev)?;
            vae.encode(&x).map_err(candle_core::Error::wrap)?;
        }
        // CUDA runs asynchronously: the step is done when the device is.
        dev.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let workload = match mode {
        "decode" => Workload::Decode,
        _ => Workload::Encode,
    };
    let estimate = memory::estimate(
        &memory::ModelSize {
            vae: params as u64,
            ..Default::default()
        },
        &memory::Configs {
            unet: None,
            vae: Some(&cfg),
        },
        &memory::Request {
            height: size,
            width: size,
            dtype: DType::F32,
            phases: vec![(workload, batch)],
        },
    );
    report(
        &format!(
            "sd15-vae size={size} mode={mode} batch={batch} params={:.0}M",
            params as f64 / 1e6
        ),
        &times,
        &estimate,
    );
    Ok(())
}

/// One result line: times, measured and estimated peak.
fn report(what: &str, times: &[f64], estimate: &memory::Estimate) {
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let peak = peak_rss_mib();
    let est = estimate.total() as f64 / (1u64 << 20) as f64;
    println!(
        "{what} iters={} best={best:.2}s mean={:.2}s peak_rss={peak:.0}MiB estimate={est:.0}MiB ({:+.0} %) threads={}",
        times.len(),
        times.iter().sum::<f64>() / times.len() as f64,
        100.0 * (est - peak) / peak,
        candle_core::utils::get_num_threads(),
    );
}

/// Under `perf record --control fifo:F -D -1` (`profile.sh`, with `FMN_PERF_CTL=F`), sampling
/// starts here, at the second iteration: the setup and the first iteration's heap growth are not
/// the steady state being profiled.
fn perf_steady_state() {
    if let Some(fifo) = std::env::var_os("FMN_PERF_CTL") {
        if let Err(e) = std::fs::write(&fifo, "enable\n") {
            eprintln!("sd_step: could not enable perf through {fifo:?}: {e}");
        }
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn main() -> candle_core::Result<()> {
    // As the stages run (fmn_sd_args::run_stage): freed activations stay in the heap for the
    // next, candle's element-wise ops on this thread.
    fmn_core::tune_for_tensors();
    let args: Vec<String> = std::env::args().collect();
    let size: usize = arg(&args, "--size", 256);
    let mode: String = arg(&args, "--mode", "forward".to_string());
    let iters: usize = arg(&args, "--iters", 2);
    let batch: usize = arg(&args, "--batch", 1);
    let device: String = arg(&args, "--device", "cpu".to_string());
    let dev =
        fmn_sd::device::from_name(&device).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    if mode == "decode" || mode == "encode" {
        return vae_step(&dev, size, &mode, iters, batch);
    }
    let cfg = sd15_config();

    // Random weights: built once through a VarMap (its init hints), then held as plain tensors
    // so that only the chosen ones become trainable.
    let mut tensors = random_weights(&dev, |vb| UNet2DConditionModel::new(vb, &cfg).map(drop))?;
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    let mut trainable = Vec::new();
    for (name, t) in tensors.iter_mut() {
        let train = match mode.as_str() {
            "all" => true,
            "ca" => name.contains(".attn2."),
            _ => false,
        };
        if train {
            let var = Var::from_tensor(t)?;
            *t = var.as_tensor().clone();
            trainable.push(var);
        }
    }
    let trainable_params: usize = trainable.iter().map(|v| v.elem_count()).sum();
    let unet =
        UNet2DConditionModel::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &cfg)?;

    let latent = size / 8;
    let sample = Tensor::randn(0f32, 1f32, (batch, 4, latent, latent), &dev)?;
    let context = Tensor::randn(0f32, 1f32, (batch, 77, 768), &dev)?;
    let t = Tensor::new(vec![500f32; batch], &dev)?;
    let target = Tensor::randn(0f32, 1f32, (batch, 4, latent, latent), &dev)?;
    // Textual inversion: the SD 1.5 text encoder (random weights) with two learned rows, frozen
    // UNet, denoising MSE; only the rows train.
    let ti = if mode == "ti" {
        let text_cfg: ClipTextConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12,
            "max_position_embeddings": 77, "hidden_act": "quick_gelu"
        }))
        .expect("valid config");
        // Random weights through a VarMap, then frozen (plain tensors), as the inversion has it.
        let frozen = random_weights(&dev, |vb| ClipTextModel::new(vb, &text_cfg).map(drop))?;
        let text_params: usize = frozen.values().map(|t| t.elem_count()).sum();
        let text = ClipTextModel::new(
            VarBuilder::from_tensors(frozen, DType::F32, &dev),
            &text_cfg,
        )?;
        let mut ids = vec![49406u32, 320, 1125, 539, 49408, 49409, 49407];
        ids.resize(77, 49407);
        let ids = Tensor::new(ids.as_slice(), &dev)?
            .unsqueeze(0)?
            .repeat((batch, 1))?;
        let rows = Var::from_tensor(&(Tensor::randn(0f32, 1f32, (2, 768), &dev)? * 0.017)?)?;
        Some((text, ids, rows, text_params))
    } else {
        None
    };
    let mut times = Vec::new();
    for i in 0..iters {
        if i == 1 {
            perf_steady_state();
        }
        let start = Instant::now();
        if mode == "forward" {
            unet.forward(&sample, &t, &context)?
                .sum_all()?
                .to_scalar::<f32>()?;
        } else if mode == "ti" {
            let (text, ids, rows, _) = ti.as_ref().expect("built for mode ti");
            let context = text
                .forward_with_token_embeddings(ids, rows.as_tensor())
                .map_err(candle_core::Error::wrap)?;
            let pred = unet.forward(&sample, &t, &context)?;
            let loss = (pred - &target)?.sqr()?.mean_all()?;
            let grads = loss.backward()?;
            assert!(
                grads.get(rows.as_tensor()).is_some(),
                "the token rows got no gradient"
            );
        } else {
            let rec = AttentionRecorder::new();
            unet.forward_with_probe(&sample, &t, &context, Some(&rec))?;
            let mut loss = Tensor::new(0f32, &dev)?;
            for r in rec.take() {
                loss = (loss + r.probs.narrow(3, 1, 2)?.sqr()?.sum_all()?)?;
            }
            let grads = loss.backward()?;
            // The last attn2's value/output projections cannot change any attention probability,
            // so an attention-only loss leaves exactly those 3 tensors without a gradient.
            let missing = trainable
                .iter()
                .filter(|v| grads.get(v.as_tensor()).is_none())
                .count();
            assert!(
                mode == "all" || missing <= 3,
                "{missing} trainable tensors got no gradient"
            );
        }
        dev.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let text_params = ti.as_ref().map_or(0, |t| t.3);
    let workload = match mode.as_str() {
        "forward" => Workload::Forward,
        _ => Workload::Train {
            trainable_params: trainable_params as u64,
            optimizer: false,
            text_encoder_in_graph: mode == "ti",
        },
    };
    let estimate = memory::estimate(
        &memory::ModelSize {
            unet: params as u64,
            text_encoder: text_params as u64,
            ..Default::default()
        },
        &memory::Configs {
            unet: Some(&cfg),
            vae: None,
        },
        &memory::Request {
            height: size,
            width: size,
            dtype: DType::F32,
            phases: vec![(workload, batch)],
        },
    );
    report(
        &format!(
            "sd15-unet size={size} mode={mode} batch={batch} params={:.0}M trainable={:.1}M text_params={:.0}M",
            params as f64 / 1e6,
            trainable_params as f64 / 1e6,
            text_params as f64 / 1e6,
        ),
        &times,
        &estimate,
    );
    Ok(())
}
