//! `loss: denoise` (ESD's erasure onto the anchor): the UNet's noise prediction under the
//! concept's prompt moves onto the base model's under its anchor prompt, through weights
//! outside cross-attention too. On the toy model: the tiny random fixture draws nothing that
//! its prompts decide (its "bob" and "" predictions differ by 3 %).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::{seeded_noise, StableDiffusion};
use fmn_toy_world::Concept;
use std::path::{Path, PathBuf};
use std::process::Output;

fn model() -> PathBuf {
    fmn_testkit::fixtures().join("../../data/toy-model")
}

fn resteer(dir: &Path, args: &[&str], out: &Path) -> Output {
    let images = dir.join("bob");
    if !images.exists() {
        let bob = "bob".parse::<Concept>().unwrap();
        fmn_toy_world::dataset::render_set(&images, 4, 77, Some(bob), |_| {}).unwrap();
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_fmn-resteer"))
        .arg("--model")
        .arg(model())
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--quiet", "--json", "--concept", "bob", "--kind", "object"])
        .arg("--images")
        .arg(images)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// `‖a − b‖ / ‖b‖`.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let d = norm(&(a - b).unwrap()).to_scalar::<f32>().unwrap();
    d / norm(b).to_scalar::<f32>().unwrap()
}

/// The UNet's prediction for `x_t` at timestep 900 under `prompt`.
fn eps(sd: &StableDiffusion, x_t: &Tensor, prompt: &str) -> Tensor {
    let ctx = sd.encode_prompts(&[prompt]).unwrap();
    let t = Tensor::new(&[900f32], &Device::Cpu).unwrap();
    sd.unet.forward(x_t, &t, &ctx).unwrap()
}

#[test]
fn denoise_steps_move_the_concepts_prediction_onto_its_anchors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    // The anchor "" (no sibling): "a photo of bob" is moved onto "a photo of".
    let args = [
        "--loss",
        "denoise",
        "--params",
        "all",
        "--steps",
        "40",
        "--lr",
        "0.0001",
        "--no-sibling-anchor",
        // From the base weights: the solve alone already moves the keys/values onto the anchor's.
        "--no-solve-anchor",
    ];
    let res = resteer(tmp.path(), &args, &out);
    let report = fmn_testkit::json_of(&res);
    let parts = &report["report"]["final_parts"];
    assert!(parts["denoise"].as_f64().unwrap().is_finite(), "{report}");
    assert!(parts["preserved"].as_f64().unwrap().is_finite(), "{report}");
    assert!(parts.get("attention").is_none(), "{report}");
    assert_eq!(
        report["concepts"][0]["anchors"][0].as_str(),
        Some("a photo of")
    );

    let mut patch = Patch::load(&out).unwrap();
    // Weights outside cross-attention change too: the convolutions, self-attention.
    for part in [
        "conv_in.weight",
        "attn1.to_q.weight",
        "resnets.0.conv1.weight",
    ] {
        let moved = patch
            .deltas
            .iter()
            .filter(|(k, _)| k.contains(part))
            .map(|(_, d)| {
                d.to_dtype(DType::F32)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .fold(0.0f32, f32::max);
        assert!(moved > 0.0, "no delta on {part}");
    }

    // Without the key/value deltas (which the anchor term moves as well), what is left is the
    // denoising terms' doing.
    patch
        .deltas
        .retain(|k, _| !k.contains(".attn2.to_k.") && !k.contains(".attn2.to_v."));
    let base = StableDiffusion::load(&model(), &Device::Cpu, DType::F32).unwrap();
    let patched =
        StableDiffusion::load_with_patches(&model(), &Device::Cpu, DType::F32, &[patch]).unwrap();
    // At t = 900 a latent is nearly noise: one the steps trained on.
    let x_t = seeded_noise(base.latent_shape(1, 64, 64).unwrap(), 7, &Device::Cpu).unwrap();
    let anchor = eps(&base, &x_t, "a photo of");
    let before = rel(&eps(&base, &x_t, "a photo of bob"), &anchor);
    let after = rel(&eps(&patched, &x_t, "a photo of bob"), &anchor);
    // A prompt of the toy model's preserve list moves less than the concept's moves.
    let kept = "a photo of a red square";
    let kept_moved = rel(&eps(&patched, &x_t, kept), &eps(&base, &x_t, kept));
    eprintln!("before {before} after {after} kept {kept_moved}");
    assert!(
        after < 0.85 * before,
        "the concept's prediction did not move onto the anchor's: {before} -> {after}"
    );
    assert!(
        kept_moved < before - after,
        "{kept:?} moved by {kept_moved}, the concept by {}",
        before - after
    );
}

#[test]
fn denoise_needs_anchor_prompts_and_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    let args = [
        "--loss",
        "denoise",
        "--steps",
        "2",
        "--anchor-weight",
        "0",
        "--no-solve-anchor",
    ];
    let res = resteer(tmp.path(), &args, &out);
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("`loss: denoise`") && err.contains("anchor_weight"),
        "{err}"
    );
    // Without steps there is nothing for it to do.
    let res = resteer(tmp.path(), &["--loss", "denoise", "--steps", "0"], &out);
    let err = fmn_testkit::refused(&res, &out);
    assert!(err.contains("max_train_steps"), "{err}");
    // The attacker inside the steps attacks the denoising steps only.
    let res = resteer(
        tmp.path(),
        &["--steps", "2", "--adversary-steps", "1"],
        &out,
    );
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("`adversary_steps`") && err.contains("loss: denoise"),
        "{err}"
    );
    // So does the choice of prior images, which are some of `prior_images`.
    let config = tmp.path().join("c.yaml");
    std::fs::write(&config, "prior_nearest: 4\n").unwrap();
    let res = resteer(
        tmp.path(),
        &["--steps", "2", "--config", config.to_str().unwrap()],
        &out,
    );
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("`prior_nearest`") && err.contains("loss: denoise"),
        "{err}"
    );
    std::fs::write(&config, "prior_nearest: 4\nprior_images: 2\n").unwrap();
    let res = resteer(
        tmp.path(),
        &[
            "--loss",
            "denoise",
            "--params",
            "all",
            "--steps",
            "2",
            "--config",
            config.to_str().unwrap(),
        ],
        &out,
    );
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("`prior_nearest` (4)") && err.contains("`prior_images` (2)"),
        "{err}"
    );
}

#[test]
fn an_attacker_inside_the_steps_is_erased_with_the_concept() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    let config = tmp.path().join("c.yaml");
    // Two prior images keep the run short.
    std::fs::write(&config, "prior_images: 2\n").unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--loss",
        "denoise",
        "--params",
        "all",
        "--steps",
        "3",
        "--lr",
        "0.0001",
        "--adversary-steps",
        "2",
    ];
    let res = resteer(tmp.path(), &args, &out);
    let report = fmn_testkit::json_of(&res);
    let parts = &report["report"]["final_parts"];
    // The attacker's inversion loss on bob's images: a mean square of unit-variance targets.
    let attacker = parts["adversary"].as_f64().unwrap();
    assert!(attacker > 0.0 && attacker < 10.0, "{report}");
    assert!(parts["denoise"].as_f64().unwrap().is_finite(), "{report}");
    assert!(out.exists());
}

#[test]
fn the_prior_images_are_what_the_sampler_draws_for_their_prompts() {
    use fmn_resteer::prior::PriorImages;
    use fmn_sd::sample::pipeline::SampleRequest;
    use fmn_sd::sample::scheduler::SamplerKind;
    let dev = Device::Cpu;
    let sd =
        StableDiffusion::load(&fmn_testkit::fixtures().join("sd1-tiny"), &dev, DType::F32).unwrap();
    let prompts = ["a red square", "a photo of a dog"];
    let [_, c, h, w] = sd.latent_shape(1, 32, 32).unwrap();
    let prior = PriorImages::sample(
        &sd.unet,
        &sd.scheduler,
        sd.encode_prompts(&prompts).unwrap(),
        &sd.encode_prompts(&[""]).unwrap(),
        7.5,
        [c, h, w],
        11,
        &dev,
    )
    .unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let req = SampleRequest {
            prompt,
            negative_prompt: "",
            sampler: SamplerKind::Ddim,
            steps: 25,
            guidance: 7.5,
            guidance_rescale: 0.0,
            init_noise: seeded_noise([1, c, h, w], 11 + i as u64, &dev).unwrap(),
            attention_steps: &[],
            step_seed: 0,
        };
        let one = sd.sample(&req, |_| {}).unwrap().latents;
        let batched = prior.latents.get(i).unwrap().unsqueeze(0).unwrap();
        // One image alone and two in a batch round differently.
        let err = fmn_testkit::max_abs_diff(&batched, &one) / fmn_testkit::max_abs(&one);
        assert!(err < 1e-4, "{prompt}: {err} of the largest value");
    }
}

#[test]
fn the_prompts_that_best_explain_a_concepts_images_come_first() {
    use fmn_resteer::prior::explaining;
    use fmn_sd::train::images::TrainingImages;
    use fmn_sd::train::noise_schedule::NoiseSchedule;
    let dev = Device::Cpu;
    let sd = StableDiffusion::load(&model(), &dev, DType::F32).unwrap();
    let schedule = NoiseSchedule::from_config(&sd.scheduler).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = [
        "a blue cross",
        "a red square in the style of stripes",
        "a yellow circle",
        "a green triangle",
        "kiki",
        "bob",
    ];
    // The toy model draws what its prompts say: each subject's renders are best explained by
    // the prompt naming it, whatever the order of the candidates.
    for (subject, best) in [("bob", "bob"), ("kiki", "kiki")] {
        let dir = tmp.path().join(subject);
        let concept = subject.parse::<Concept>().unwrap();
        fmn_toy_world::dataset::render_set(&dir, 4, 5, Some(concept), |_| {}).unwrap();
        let images = TrainingImages::load(&dir, None).unwrap();
        let side = sd.default_image_side() as u32;
        let latents: Vec<Tensor> = (0..images.len())
            .map(|i| {
                let px = images.example(i, side, None, &dev).unwrap().pixels;
                let mean = sd.vae.encode(&px).unwrap().mean().clone();
                (mean * sd.vae.scaling_factor()).unwrap()
            })
            .collect();
        let ranked: Vec<&str> = explaining(
            &sd.unet,
            &schedule,
            &sd.encode_prompts(&prompts).unwrap(),
            &latents,
            (100, 700),
            3,
        )
        .unwrap()
        .into_iter()
        .map(|k| prompts[k])
        .collect();
        assert_eq!(ranked.len(), prompts.len());
        assert_eq!(ranked[0], best, "{subject}: {ranked:?}");
    }
}
