//! The attacker inside the denoising steps (`adversary_steps`): one attack step moves its rows
//! along the gradient of textual inversion's loss (`fmn_inversion::train::objective`, whose
//! gradient is checked against finite differences in fmn-invert's tests), with the run's
//! other added tokens before its own; and the context it returns is its prompt's.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_inversion::train::{objective, Denoising};
use fmn_ops::noise::NoiseRng;
use fmn_resteer::adversary::Adversary;
use fmn_resteer::prompts::PoolerPositions;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::scaffold::NoisyLatents;

/// An attacker for "a photo of {}" on `sd` with `tokenizer`'s tokens.
fn attacker(sd: &StableDiffusion, tokenizer: &ClipTokenizer) -> Adversary {
    let template = "a photo of {}".to_string();
    Adversary::new(
        tokenizer,
        &sd.text_encoder,
        &[&template],
        PoolerPositions::First,
        0,
        3,
        &Device::Cpu,
    )
    .unwrap()
}

/// The tiny model in f64.
fn tiny() -> StableDiffusion {
    let dir = fmn_testkit::fixtures().join("sd1-tiny");
    StableDiffusion::load(&dir, &Device::Cpu, DType::F64).unwrap()
}

/// A seeded noisy latent and target at timestep 412.
fn noisy() -> NoisyLatents {
    let mut rng = NoiseRng::new(7);
    NoisyLatents {
        x_t: fmn_testkit::randn_f64(&mut rng, &[1, 4, 4, 4]),
        t: Tensor::new(&[412f64], &Device::Cpu).unwrap(),
        target: fmn_testkit::randn_f64(&mut rng, &[1, 4, 4, 4]),
    }
}

/// One attack step from `added` (the run's other added rows, if any) against the reference.
fn check_step(added: Option<&Tensor>) {
    let dev = Device::Cpu;
    let sd = tiny();
    let mut tokenizer = sd.tokenizer.clone();
    if added.is_some() {
        tokenizer.add_tokens(&["<learned>"]).unwrap();
    }
    let adversary = attacker(&sd, &tokenizer);
    let start = adversary.rows().unwrap();
    assert_eq!(start.dims(), &[2, 32]);

    let noisy = noisy();
    let lr = 1e-3;
    let (loss, context) = adversary
        .attack(&sd.text_encoder, added, &sd.unet, &noisy, 0, 1, lr)
        .unwrap();

    // The reference: the inversion's loss on "a photo of <a1> <a2>", its tokens after the
    // run's added ones.
    let mut reference = tokenizer.clone();
    reference
        .add_tokens(&["<fmn-adversary-c0-1>", "<fmn-adversary-c0-2>"])
        .unwrap();
    let ids = reference
        .encode("a photo of <fmn-adversary-c0-1> <fmn-adversary-c0-2>")
        .unwrap();
    let ids = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let var = Var::from_tensor(&start).unwrap();
    let rows = |own: &Tensor| match added {
        Some(a) => Tensor::cat(&[a, own], 0).unwrap(),
        None => own.clone(),
    };
    let batch = Denoising {
        x_t: &noisy.x_t,
        t: &noisy.t,
        target: &noisy.target,
        weights: None,
    };
    let want = objective(&sd, &ids, &rows(var.as_tensor()), &batch).unwrap();
    let want_loss = want.to_scalar::<f64>().unwrap();
    assert!(
        (loss - want_loss).abs() < 1e-12 * want_loss.abs().max(1.0),
        "{loss} vs {want_loss}"
    );
    let g = want
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .clone();
    let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let norm = norm.to_scalar::<f64>().unwrap();
    assert!(norm > 0.0);
    // rows − lr·√n · g / ‖g‖: lr per value, as a sign step moves a value.
    let expect = (&start - (g * (lr * 8.0 / norm)).unwrap()).unwrap();
    let moved = adversary.rows().unwrap();
    assert!(
        fmn_testkit::max_diff_f64(&moved, &expect) < 1e-12,
        "{moved} vs {expect}"
    );
    assert!(
        fmn_testkit::max_diff_f64(&moved, &start) > 1e-4,
        "the rows did not move"
    );
    // The context returned is the prompt's after the step.
    let after = sd
        .text_encoder
        .forward_with_token_embeddings(&ids, &rows(&moved))
        .unwrap();
    assert!(fmn_testkit::max_diff_f64(&context, &after) < 1e-12);
    // The step lowers the inversion's loss.
    let lower = objective(&sd, &ids, &rows(&moved), &batch)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(lower < want_loss, "{want_loss} -> {lower}");
}

#[test]
fn an_attack_step_follows_the_inversion_gradient() {
    check_step(None);
}

#[test]
fn the_attackers_tokens_come_after_the_runs_added_tokens() {
    let learned = (Tensor::ones((1, 32), DType::F64, &Device::Cpu).unwrap() * 0.05).unwrap();
    check_step(Some(&learned));
}

#[test]
fn a_long_step_leaves_rows_at_the_median_token_norm() {
    let sd = tiny();
    let adversary = attacker(&sd, &sd.tokenizer);
    let table: Vec<Vec<f64>> = sd.text_encoder.token_embedding_table().to_vec2().unwrap();
    let mut norms: Vec<f64> = table
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    norms.sort_by(f64::total_cmp);
    let median = norms[norms.len() / 2];
    let noisy = noisy();
    // 0.5 per value: far longer than any token row.
    adversary
        .attack(&sd.text_encoder, None, &sd.unet, &noisy, 0, 1, 0.5)
        .unwrap();
    let rows: Vec<Vec<f64>> = adversary.rows().unwrap().to_vec2().unwrap();
    for row in rows {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        // The median is taken in f32.
        assert!((n - median).abs() < 1e-6 * median, "{n} vs {median}");
    }
}

#[test]
fn the_frozen_view_draws_like_the_trained_unet_and_passes_no_weight_gradient() {
    use fmn_resteer::params::Trainable;
    use fmn_resteer::ParamSet;
    use fmn_sd::io::source::{ModelSource, SourceOptions};
    let dev = Device::Cpu;
    let dir = fmn_testkit::fixtures().join("sd1-tiny");
    let source = ModelSource::open(&dir, &SourceOptions::default()).unwrap();
    let weights = source
        .load_tensors_where("unet", DType::F32, &dev, |_| true)
        .unwrap();
    let trainable = Trainable::new(
        weights,
        source.unet_config().unwrap(),
        ParamSet::Attn2Kv,
        None,
        1,
    )
    .unwrap();
    // Non-zero deltas, so that the view must carry them.
    let mut rng = NoiseRng::new(11);
    let names: Vec<String> = trainable.names().cloned().collect();
    for name in &names {
        let dims = trainable.base(name).unwrap().dims().to_vec();
        let d = (rng.randn(&dims, &dev).unwrap() * 0.05).unwrap();
        assert!(trainable.set_full(name, &d).unwrap());
    }
    let (trained, frozen) = trainable.unet_and_frozen(&dev).unwrap();
    let x = rng.randn(&[1, 4, 4, 4], &dev).unwrap();
    let t = Tensor::new(&[412f32], &dev).unwrap();
    let context = Var::from_tensor(&rng.randn(&[1, 77, 32], &dev).unwrap()).unwrap();
    let run = |unet: &fmn_sd::models::unet::UNet2DConditionModel| {
        let out = unet.forward(&x, &t, context.as_tensor()).unwrap();
        let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let input = grads.get(context.as_tensor()).unwrap().clone();
        let weight_grads = trainable
            .vars()
            .iter()
            .filter(|(_, v)| grads.get(v.as_tensor()).is_some())
            .count();
        (out, input, weight_grads)
    };
    let (out_t, input_t, weights_t) = run(&trained);
    let (out_f, input_f, weights_f) = run(&frozen);
    let reference = trainable.unet(&dev).unwrap();
    let out_r = reference.forward(&x, &t, context.as_tensor()).unwrap();
    use fmn_testkit::{max_abs, max_abs_diff};
    assert_eq!(max_abs_diff(&out_t, &out_r), 0.0);
    assert_eq!(max_abs_diff(&out_f, &out_t), 0.0);
    // The input's gradient is the same through both; only the trained UNet's reaches the deltas.
    let scale = max_abs(&input_t);
    assert!(scale > 0.0);
    assert!(max_abs_diff(&input_f, &input_t) <= 1e-5 * scale);
    assert_eq!(weights_t, names.len());
    assert_eq!(weights_f, 0);
}
