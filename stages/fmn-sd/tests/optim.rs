//! AdamW against values computed by hand from torch.optim.AdamW's update rule.
use candle_core::{Device, Tensor, Var};
use fmn_sd::optim::{AdamW, AdamWConfig};

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
