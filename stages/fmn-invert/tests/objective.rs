//! The inversion loss pieces against hand-computed values, the initialisers against the text
//! encoder's table, and the gradient reaching the new tokens' rows against finite differences.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_invert::init::Initializer;
use fmn_invert::train::{decay_norms, denoising_loss, loss_weights, objective, Denoising};
use fmn_ops::noise::NoiseRng;
use fmn_sd::sample::pipeline::StableDiffusion;
use std::path::{Path, PathBuf};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

#[test]
fn norm_decay_moves_each_norm_toward_the_target() {
    // Row norms 5 and 0.2; λ = 0.1, target 0.4: 5 -> 4.54, 0.2 -> 0.22, directions kept.
    let rows = Tensor::new(&[[3f32, 4.0], [0.0, -0.2]], &Device::Cpu).unwrap();
    let out = vec2(&decay_norms(&rows, 0.4, 0.1).unwrap());
    let expect = [[3.0 * 4.54 / 5.0, 4.0 * 4.54 / 5.0], [0.0, -0.22]];
    for (o, e) in out.iter().flatten().zip(expect.iter().flatten()) {
        assert!((o - e).abs() < 1e-5, "{out:?} vs {expect:?}");
    }
}

#[test]
fn mask_weights_are_the_floored_mask_at_latent_size_with_mean_one() {
    // Left half of a 4×4 mask -> 2×2 area means [[1,0],[1,0]]; + 0.05 -> mean 0.55.
    let m = Tensor::from_vec(
        (0..16)
            .map(|i| if i % 4 < 2 { 1f32 } else { 0.0 })
            .collect::<Vec<_>>(),
        (1, 1, 4, 4),
        &Device::Cpu,
    )
    .unwrap();
    let w = loss_weights(&m, 2, 2, 0.05).unwrap();
    assert_eq!(w.dims(), &[1, 1, 2, 2]);
    let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let (hi, lo) = (1.05 / 0.55, 0.05 / 0.55);
    for (got, want) in w.iter().zip([hi, lo, hi, lo]) {
        assert!((*got as f64 - want).abs() < 1e-5, "{w:?}");
    }
}

#[test]
fn denoising_loss_is_the_weighted_mean_square() {
    let dev = Device::Cpu;
    let pred = Tensor::new(&[1f32, 2.0], &dev)
        .unwrap()
        .reshape((1, 1, 1, 2))
        .unwrap();
    let target = Tensor::zeros((1, 1, 1, 2), DType::F32, &dev).unwrap();
    let w = Tensor::new(&[2f32, 0.5], &dev)
        .unwrap()
        .reshape((1, 1, 1, 2))
        .unwrap();
    let plain: f32 = denoising_loss(&pred, &target, None)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((plain - 2.5).abs() < 1e-6); // (1 + 4) / 2
    let weighted: f32 = denoising_loss(&pred, &target, Some(&w))
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((weighted - 2.5).abs() < 1e-6); // ((2·1)² + (0.5·2)²) / 2
    let w2 = Tensor::new(&[1f32, 3.0], &dev)
        .unwrap()
        .reshape((1, 1, 1, 2))
        .unwrap();
    let weighted: f32 = denoising_loss(&pred, &target, Some(&w2))
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((weighted - 18.5).abs() < 1e-5); // (1 + 36) / 2
}

#[test]
fn initialisers_take_a_words_row_noise_or_zero() {
    let sd = StableDiffusion::load(&model_dir(), &Device::Cpu, DType::F32).unwrap();
    let mut rng = NoiseRng::new(1);
    let dog = Initializer::parse("dog").unwrap();
    let v = dog
        .vector("<s1>", &sd.tokenizer, &sd.text_encoder, &mut rng)
        .unwrap();
    let id = sd.tokenizer.tokenize("dog").unwrap()[0] as usize;
    let row = sd.text_encoder.token_embedding_table().get(id).unwrap();
    assert_eq!(
        v.to_vec1::<f32>().unwrap(),
        row.to_vec1::<f32>().unwrap(),
        "a word initialiser copies the word's row"
    );
    let by_id = Initializer::parse(&id.to_string()).unwrap();
    assert_eq!(
        by_id
            .vector("<s1>", &sd.tokenizer, &sd.text_encoder, &mut rng)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        row.to_vec1::<f32>().unwrap()
    );
    let zero = Initializer::parse("<zero>").unwrap();
    let z = zero
        .vector("<s1>", &sd.tokenizer, &sd.text_encoder, &mut rng)
        .unwrap();
    assert!(z.to_vec1::<f32>().unwrap().iter().all(|&x| x == 0.0));
    assert_eq!(
        Initializer::parse("<rand-0.5>").unwrap(),
        Initializer::Random(0.5)
    );
    let r = Initializer::Random(0.5);
    let big = (0..64)
        .map(|_| {
            r.vector("<s1>", &sd.tokenizer, &sd.text_encoder, &mut rng)
                .unwrap()
        })
        .collect::<Vec<_>>();
    let all: Vec<f32> = Tensor::cat(&big, 0).unwrap().to_vec1().unwrap();
    let n = all.len() as f64;
    let sd_est = (all.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
    assert!((sd_est - 0.5).abs() < 0.03, "σ estimate {sd_est}");

    let err = Initializer::parse("yellow circle")
        .unwrap()
        .vector("<s1>", &sd.tokenizer, &sd.text_encoder, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 tokens") && err.contains("<s1>"), "{err}");
    assert!(Initializer::parse("<rand-x>").is_err());
    assert!(Initializer::parse("<rand--1>").is_err());
}

#[test]
fn the_gradient_on_the_new_rows_matches_finite_differences() {
    let dev = Device::Cpu;
    let mut sd = StableDiffusion::load(&model_dir(), &dev, DType::F64).unwrap();
    sd.tokenizer.add_tokens(&["<s1>", "<s2>"]).unwrap();
    let ids = Tensor::new(
        sd.tokenizer
            .encode("a photo of <s1> <s2>")
            .unwrap()
            .as_slice(),
        &dev,
    )
    .unwrap()
    .unsqueeze(0)
    .unwrap();
    let mut rng = NoiseRng::new(7);
    let mut r = |s: &[usize]| rng.randn(s, &dev).unwrap().to_dtype(DType::F64).unwrap();
    let rows = Var::from_tensor(&(r(&[2, 32]) * 0.3).unwrap()).unwrap();
    let x_t = r(&[1, 4, 4, 4]);
    let target = r(&[1, 4, 4, 4]);
    let weights = (r(&[1, 1, 4, 4]).abs().unwrap() + 0.05).unwrap();
    let t = Tensor::new(&[412f64], &dev).unwrap();
    let batch = Denoising {
        x_t: &x_t,
        t: &t,
        target: &target,
        weights: Some(&weights),
    };
    let loss = objective(&sd, &ids, rows.as_tensor(), &batch).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(rows.as_tensor())
        .expect("the rows receive a gradient");
    let g: Vec<Vec<f64>> = g.to_vec2().unwrap();
    let base: Vec<Vec<f64>> = rows.as_tensor().to_vec2().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for (i, j) in [(0, 0), (0, 7), (0, 31), (1, 3), (1, 16), (1, 30)] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i][j] += delta;
            let t = Tensor::new(v, &dev).unwrap();
            objective(&sd, &ids, &t, &batch)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let rel = (g[i][j] - fd).abs() / fd.abs().max(1e-8);
        assert!(
            rel < 1e-4 || (g[i][j] - fd).abs() < 1e-9,
            "row {i}[{j}]: analytic {} vs finite difference {fd}",
            g[i][j]
        );
        checked += usize::from(fd.abs() > 1e-9);
    }
    assert!(checked >= 4, "the loss barely depends on the rows");
}
