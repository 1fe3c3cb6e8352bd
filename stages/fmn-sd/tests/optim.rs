//! AdamW against values computed by hand from torch.optim.AdamW's update rule.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_sd::train::optim::{AdamW, AdamWConfig};

#[test]
fn two_steps_match_hand_computed_adamw_with_clipping() {
    let dev = Device::Cpu;
    let w = Var::new(&[1.0f64, -2.0], &dev).unwrap();
    let cfg = AdamWConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
    // loss = 3 w0 + 4 w1  -> grad (3, 4), norm 5; clipped to norm 1 -> (0.6, 0.8) (approximately,
    // torch divides by norm + 1e-6).
    let loss = (w.as_tensor() * &Tensor::new(&[3.0f64, 4.0], &dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let norm = opt.step(&loss.backward().unwrap(), Some(1.0)).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    // Step 1: m_hat = g, v_hat = g^2, update = g / (|g| + eps) = sign(g) (eps negligible).
    // w <- w (1 - lr wd) - lr * 1 = (1 * 0.95 - 0.1, -2 * 0.95 - 0.1)
    let got = w.as_tensor().to_vec1::<f64>().unwrap();
    let s = 1.0 / (5.0 + 1e-6);
    let expected_step1 = |wi: f64, gi: f64| {
        let g = gi * 5.0 * s;
        wi * 0.95 - 0.1 * g / (g.abs() + 1e-8)
    };
    let e1 = [expected_step1(1.0, 0.6), expected_step1(-2.0, 0.8)];
    for (g, e) in got.iter().zip(e1) {
        assert!((g - e).abs() < 1e-9, "{g} vs {e}");
    }
    // Step 2 without clipping, gradient (1, -1).
    let loss = (w.as_tensor() * &Tensor::new(&[1.0f64, -1.0], &dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    opt.step(&loss.backward().unwrap(), None).unwrap();
    let got = w.as_tensor().to_vec1::<f64>().unwrap();
    for (i, (g1, g2)) in [(0.6 * 5.0 * s, 1.0), (0.8 * 5.0 * s, -1.0)]
        .into_iter()
        .enumerate()
    {
        let m = 0.9 * (0.1 * g1) + 0.1 * g2;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
        let m_hat = m / (1.0 - 0.81);
        let v_hat = v / (1.0 - 0.999f64.powi(2));
        let e = e1[i] * 0.95 - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        assert!((got[i] - e).abs() < 1e-9, "step 2 [{i}]: {} vs {e}", got[i]);
    }
    // State round trip.
    let state = opt.state().unwrap();
    let mut other = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
    other.load_state(&state).unwrap();
    assert_eq!(other.steps_taken(), 2);
}

#[test]
fn diverged_gradients_are_an_error() {
    let dev = Device::Cpu;
    let w = Var::new(&[1.0f64], &dev).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default()).unwrap();
    let loss = (w.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
    assert!(opt.step(&loss.backward().unwrap(), Some(1.0)).is_err());
    assert_eq!(w.as_tensor().to_vec1::<f64>().unwrap(), [1.0]);
}

/// Three steps on `[4, 3]` weights, with weight decay and clipping, of a loss whose gradient is
/// `coef · w + shift` (so it changes with the weights).
fn three_steps(dtype: DType, state_round_trip: bool) -> Vec<f64> {
    let dev = Device::Cpu;
    let w0: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    let coef = Tensor::new(
        (0..12)
            .map(|i| 0.5 + (i as f64 * 0.11).cos())
            .collect::<Vec<_>>(),
        &dev,
    )
    .unwrap()
    .reshape((4, 3))
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let w = Var::from_tensor(
        &Tensor::new(w0, &dev)
            .unwrap()
            .reshape((4, 3))
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let cfg = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
    for step in 0..3 {
        if state_round_trip && step == 2 {
            let state = opt.state().unwrap();
            opt = AdamW::new(vec![("w".into(), w.clone())], cfg).unwrap();
            opt.load_state(&state).unwrap();
        }
        let wt = w.as_tensor();
        let loss = ((wt.sqr().unwrap() * &coef).unwrap().sum_all().unwrap()
            + (wt * 0.3).unwrap().sum_all().unwrap())
        .unwrap();
        opt.step(&loss.backward().unwrap(), Some(2.0)).unwrap();
    }
    w.as_tensor()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn f32_parameters_take_the_steps_of_the_f64_reference() {
    // f32 weights on the CPU go through the fused host update, f64 ones through the tensor
    // form (checked against hand-computed values above).
    let reference = three_steps(DType::F64, false);
    for round_trip in [false, true] {
        let fused = three_steps(DType::F32, round_trip);
        for (f, r) in fused.iter().zip(&reference) {
            assert!((f - r).abs() < 2e-6, "{fused:?} vs {reference:?}");
        }
    }
    // The steps moved the weights (by ~lr per step), so the comparison is not vacuous.
    let start: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    assert!(reference
        .iter()
        .zip(&start)
        .all(|(r, s)| (r - s).abs() > 0.05));
}
