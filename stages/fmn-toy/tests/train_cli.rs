//! `fmn-toy train` end to end with tiny settings: a loadable diffusers folder, deterministic
//! from the seed, resumable, and settings changes refused on resume.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;
use std::process::Command;

/// `fmn-toy train` with `config`, checkpoints in `dir/ckpt`, the model to `dir/out`.
fn train_command(dir: &Path, config: &Path, out: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmn-toy"));
    cmd.args(["train", "--quiet", "--json"])
        .arg("--config")
        .arg(config)
        .arg("--checkpoints")
        .arg(dir.join("ckpt"))
        .arg("--out")
        .arg(dir.join(out))
        .arg("--tokenizer")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/clip-tokenizer"));
    cmd
}

fn train(dir: &Path, config: &Path, out: &str) -> std::process::Output {
    train_command(dir, config, out).output().unwrap()
}

/// A successful run with settings `yaml` in the new folder `parent/name` (model in `model/`).
fn train_in(parent: &Path, name: &str, yaml: &str) -> std::process::Output {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    let config = dir.join("tiny.yaml");
    std::fs::write(&config, yaml).unwrap();
    let res = train(&dir, &config, "model");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    res
}

const TINY: &str = "seed: 3\nrenders: 8\nvae_steps: 2\nvae_batch: 2\nvae_lr: 0.001\nvae_kl_weight: 0.000001\nunet_steps: 2\nunet_batch: 2\nunet_lr: 0.001\nwarmup_steps: 1\ncfg_dropout: 0.5\ncheckpoint_every: 1\ndecoder_steps: 2\ndecoder_batch: 2\n";

#[test]
fn trains_exports_resumes_and_refuses_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.yaml");
    std::fs::write(&config, TINY).unwrap();
    let res = train(tmp.path(), &config, "model");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert!(report["unet_final_loss"].as_f64().unwrap().is_finite());

    // The folder is a diffusers pipeline our own loader reads.
    let model = tmp.path().join("model");
    let sd = fmn_sd::sample::pipeline::StableDiffusion::load(
        &model,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    assert_eq!(sd.vae.downscale_factor(), 4);
    assert_eq!(sd.unet.config().block_out_channels, [32, 64, 64]);

    // Running again with the same settings resumes from the finished checkpoints and writes the
    // same weights.
    let res2 = train(tmp.path(), &config, "model2");
    assert!(
        res2.status.success(),
        "{}",
        String::from_utf8_lossy(&res2.stderr)
    );
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(model.join(f)).unwrap(),
            std::fs::read(tmp.path().join("model2").join(f)).unwrap(),
            "{f}"
        );
    }

    // Other settings against the same checkpoints: refused, naming the file.
    let other = tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("seed: 3", "seed: 4"),
    )
    .unwrap();
    let res3 = train(tmp.path(), &other, "model3");
    assert!(!res3.status.success());
    let err = String::from_utf8_lossy(&res3.stderr);
    assert!(
        err.contains("progress.json") && err.contains("other settings"),
        "{err}"
    );
    assert!(!tmp.path().join("model3").exists());

    // More UNet steps continue the finished run and give what a fresh run with that many
    // steps gives; fewer steps than already done are refused.
    let longer = tmp.path().join("longer.yaml");
    std::fs::write(&longer, TINY.replace("unet_steps: 2", "unet_steps: 3")).unwrap();
    let res4 = train(tmp.path(), &longer, "model4");
    assert!(
        res4.status.success(),
        "{}",
        String::from_utf8_lossy(&res4.stderr)
    );
    let fresh = tempfile::tempdir().unwrap();
    let res5 = train(fresh.path(), &longer, "model");
    assert!(
        res5.status.success(),
        "{}",
        String::from_utf8_lossy(&res5.stderr)
    );
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(tmp.path().join("model4").join(f)).unwrap(),
            std::fs::read(fresh.path().join("model").join(f)).unwrap(),
            "{f}"
        );
    }
    let shorter = tmp.path().join("shorter.yaml");
    std::fs::write(&shorter, TINY.replace("unet_steps: 2", "unet_steps: 1")).unwrap();
    let res6 = train(tmp.path(), &shorter, "model6");
    assert!(!res6.status.success());
    let err = String::from_utf8_lossy(&res6.stderr);
    assert!(err.contains("already ran 3 steps"), "{err}");
}

/// A run killed (SIGKILL) at a random step of a random stage leaves nothing at --out, and
/// running it again resumes from its checkpoint to the uninterrupted run's model, byte for
/// byte.
#[test]
fn a_killed_run_resumes_to_the_same_model() {
    let yaml = TINY
        .replace("vae_steps: 2", "vae_steps: 4")
        .replace("unet_steps: 2", "unet_steps: 4")
        .replace("decoder_steps: 2", "decoder_steps: 4");
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    train_in(tmp.path(), "full", &yaml);

    let killed = tmp.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    let config = killed.join("tiny.yaml");
    std::fs::write(&config, &yaml).unwrap();
    const STAGES: [&str; 3] = ["vae", "unet", "decoder"];
    let mut rng = fmn_testkit::TestRng::new("kill point");
    let (stage, step, delay) = (rng.below(3) as usize, rng.below(3) + 1, rng.below(20));
    eprintln!("killing after {} step {step} + {delay} ms", STAGES[stage]);
    let reached = |p: &serde_json::Value| {
        let at = STAGES.iter().position(|s| p["stage"] == *s);
        let done = p["step"].as_u64().unwrap_or(0);
        at.is_some_and(|at| at > stage || (at == stage && done >= step))
    };
    let out = killed.join("model");
    let how = fmn_testkit::kill_when(
        train_command(&killed, &config, "model"),
        &killed.join("ckpt/progress.json"),
        &out,
        reached,
        delay,
    );
    assert_eq!(how, fmn_testkit::Killed::Midway, "the run ended first");
    let res = train(&killed, &config, "model");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(full.join("model").join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_fresh_run_with_the_same_seed_gives_the_same_model() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        let config = d.path().join("tiny.yaml");
        std::fs::write(&config, TINY).unwrap();
        let res = train(d.path(), &config, "model");
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert_eq!(
        std::fs::read(a.path().join("model").join(f)).unwrap(),
        std::fs::read(b.path().join("model").join(f)).unwrap()
    );
}

fn tensors(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn the_decoder_stage_changes_only_the_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, yaml) in [
        ("with", TINY.to_string()),
        (
            "without",
            TINY.replace("decoder_steps: 2", "decoder_steps: 0"),
        ),
    ] {
        train_in(tmp.path(), name, &yaml);
    }
    let vae = |name: &str| {
        tensors(
            &tmp.path()
                .join(name)
                .join("model/vae/diffusion_pytorch_model.safetensors"),
        )
    };
    let (with, without) = (vae("with"), vae("without"));
    assert_eq!(with.len(), without.len());
    let mut changed = 0;
    for (k, a) in &with {
        let b = &without[k];
        if k.starts_with("decoder.") || k.starts_with("post_quant_conv.") {
            changed += usize::from(a != b);
        } else {
            assert_eq!(
                a, b,
                "{k}: the decoder stage changed an encoder-side tensor"
            );
        }
    }
    // Every decoder weight takes part in decoding, so two Adam steps move them all.
    let decoder = with
        .keys()
        .filter(|k| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .count();
    assert!(decoder > 0);
    assert_eq!(changed, decoder);
    let unet = |name: &str| {
        std::fs::read(
            tmp.path()
                .join(name)
                .join("model/unet/diffusion_pytorch_model.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(unet("with"), unet("without"));
}

#[test]
fn bad_settings_are_refused_naming_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, key) in [
        ("decoder_batch: 2", "decoder_batch: 0", "`decoder_batch`"),
        ("seed: 3", "seed: 3\nbatch_parts: 0", "`batch_parts`"),
        ("unet_lr: 0.001", "unet_lr: -1.0", "`unet_lr`"),
        (
            "decoder_steps: 2",
            "decoder_steps: 2\ndecoder_figure_weight: -1",
            "`decoder_figure_weight`",
        ),
        ("seed: 3", "seed: 3\nmin_snr_gamma: -5", "`min_snr_gamma`"),
        (
            "seed: 3",
            "seed: 3\nfigure_edge_weight: -1",
            "`figure_edge_weight`",
        ),
    ] {
        let config = tmp.path().join("bad.yaml");
        std::fs::write(&config, TINY.replace(from, to)).unwrap();
        let res = train(tmp.path(), &config, "model");
        assert!(!res.status.success());
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(key) && err.contains("bad.yaml"), "{err}");
        assert!(!tmp.path().join("model").exists());
        assert!(!tmp.path().join("ckpt").exists());
    }
}

/// A loss of a batch split across threads equals the whole batch's up to float rounding.
fn assert_split_gives_whole(what: &str, whole: f64, split: f64) {
    assert!(
        (whole - split).abs() <= 1e-5 * whole,
        "{what}: whole batch {whole}, split {split}"
    );
}

/// One step of each stage, the batch whole and split across two threads: the reported losses
/// (each computed before its stage's first update) agree to float rounding, including the
/// attention term; and a split run is itself reproducible.
#[test]
fn a_batch_split_across_threads_gives_the_whole_batch_step() {
    let one = TINY
        .replace("vae_steps: 2", "vae_steps: 1")
        .replace("unet_steps: 2", "unet_steps: 1")
        .replace("decoder_steps: 2", "decoder_steps: 1")
        .replace("vae_batch: 2", "vae_batch: 5")
        .replace("unet_batch: 2", "unet_batch: 5")
        .replace("decoder_batch: 2", "decoder_batch: 5")
        // No dropped captions, so both parts carry a share of the attention term.
        .replace("cfg_dropout: 0.5", "cfg_dropout: 0.0")
        + "attention_weight: 0.5\nattention_start: 0\n";
    let tmp = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for (name, yaml) in [
        ("whole", one.clone()),
        ("split", one.clone() + "batch_parts: 2\n"),
        ("split-again", one + "batch_parts: 2\n"),
    ] {
        let res = train_in(tmp.path(), name, &yaml);
        reports.push(serde_json::from_slice::<serde_json::Value>(&res.stdout).unwrap());
    }
    for key in ["vae_final_loss", "unet_final_loss", "decoder_final_loss"] {
        let whole = reports[0][key].as_f64().unwrap();
        let split = reports[1][key].as_f64().unwrap();
        assert!(whole > 0.0, "{key}: {whole}");
        assert_split_gives_whole(key, whole, split);
    }
    let f = "unet/diffusion_pytorch_model.safetensors";
    assert_eq!(
        std::fs::read(tmp.path().join("split/model").join(f)).unwrap(),
        std::fs::read(tmp.path().join("split-again/model").join(f)).unwrap()
    );
}

/// The loss of the first UNet step (1 VAE step, batch 5, no decoder) with `extra` settings,
/// trained in the new folder `parent/name`.
fn first_unet_loss(parent: &Path, name: &str, extra: &str) -> f64 {
    let one = TINY
        .replace("vae_steps: 2", "vae_steps: 1")
        .replace("unet_steps: 2", "unet_steps: 1")
        .replace("decoder_steps: 2", "decoder_steps: 0")
        .replace("unet_batch: 2", "unet_batch: 5");
    let res = train_in(parent, name, &(one + extra));
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    report["unet_final_loss"].as_f64().unwrap()
}

#[test]
fn loss_weightings_split_like_the_plain_loss_and_min_snr_reduces_to_it_above_every_snr() {
    let tmp = tempfile::tempdir().unwrap();
    let loss = |name: &str, extra: &str| first_unet_loss(tmp.path(), name, extra);
    let plain = loss("plain", "");
    // SD's schedule tops out at SNR ≈ 1,176 (t = 0), so γ = 10⁹ weights every row 1.
    let capped_above_all = loss("gamma-huge", "min_snr_gamma: 1.0e9\n");
    let whole = loss("gamma-5", "min_snr_gamma: 5.0\n");
    let split = loss("gamma-5-split", "min_snr_gamma: 5.0\nbatch_parts: 2\n");
    assert!(plain > 0.0);
    assert!(
        (plain - capped_above_all).abs() <= 1e-6 * plain,
        "plain {plain}, γ above every SNR {capped_above_all}"
    );
    // Weights are at most 1: the weighted loss cannot exceed the plain one.
    assert!(
        whole <= plain * (1.0 + 1e-6),
        "γ = 5: {whole}, plain {plain}"
    );
    assert_split_gives_whole("γ = 5", whole, split);
    // Outline weights are at least 1 and exceed it on the figure's edge cells.
    let outlined = loss("edge", "figure_edge_weight: 4.0\n");
    let outlined_split = loss("edge-split", "figure_edge_weight: 4.0\nbatch_parts: 2\n");
    assert!(
        outlined > plain,
        "outline-weighted {outlined}, plain {plain}"
    );
    assert_split_gives_whole("outline-weighted", outlined, outlined_split);
}

#[test]
fn zero_terminal_snr_exports_a_velocity_schedule_and_trains_on_the_velocity() {
    let tmp = tempfile::tempdir().unwrap();
    let loss = |name: &str, extra: &str| first_unet_loss(tmp.path(), name, extra);
    let epsilon = loss("epsilon", "");
    let velocity = loss("velocity", "zero_terminal_snr: true\n");
    let weighted = loss("weighted", "zero_terminal_snr: true\nmin_snr_gamma: 5.0\n");
    let weighted_split = loss(
        "weighted-split",
        "zero_terminal_snr: true\nmin_snr_gamma: 5.0\nbatch_parts: 2\n",
    );
    // Same draws, same initial weights: only the target and the noise levels differ.
    assert!(
        velocity.is_finite() && (velocity - epsilon).abs() > 1e-3 * epsilon,
        "velocity {velocity}, epsilon {epsilon}"
    );
    // Velocity weights min(SNR + 1, 5) / (SNR + 1) are at most 1.
    assert!(
        weighted <= velocity * (1.0 + 1e-6),
        "weighted {weighted}, plain {velocity}"
    );
    assert_split_gives_whole("velocity, γ = 5", weighted, weighted_split);

    // diffusers reads the exported schedule as zero terminal SNR, velocity, trailing steps.
    let dir = tmp.path().join("velocity/model/scheduler");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(json["rescale_betas_zero_snr"], true);
    assert_eq!(json["prediction_type"], "v_prediction");
    assert_eq!(json["timestep_spacing"], "trailing");
    let cfg =
        fmn_sd::sample::scheduler::SchedulerConfig::from_file(dir.join("scheduler_config.json"))
            .unwrap();
    let schedule = fmn_sd::train::noise_schedule::NoiseSchedule::from_config(&cfg).unwrap();
    assert_eq!(schedule.alphas_cumprod()[999], 0.0);
    // Rescaling keeps the first step's signal (SD's sqrt(alpha_bar_0) = sqrt(1 − 0.00085)).
    assert!((schedule.alphas_cumprod()[0] - (1.0 - 0.00085)).abs() < 1e-6);
    let sampler = fmn_sd::sample::scheduler::build_sampler(
        fmn_sd::sample::scheduler::SamplerKind::Ddim,
        &cfg,
        25,
    )
    .unwrap();
    assert_eq!(sampler.timesteps()[0], 999.0);
    // The velocity model tells fmn-sample to guide at 4; the epsilon one leaves diffusers' 7.5.
    let guidance = |name: &str| {
        let model = tmp.path().join(name).join("model");
        fmn_sd::io::sampling_defaults::SamplingDefaults::load(&model)
            .unwrap()
            .guidance()
    };
    assert_eq!(guidance("velocity"), 4.0);
    assert_eq!(guidance("epsilon"), 7.5);
}
