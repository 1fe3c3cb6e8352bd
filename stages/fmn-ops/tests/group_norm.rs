//! The fused GroupNorm equals candle's composed GroupNorm, and its gradients (input, weight,
//! bias) match central finite differences in f64.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Module, Tensor, Var};
use fmn_ops::group_norm::group_norm;
use fmn_ops::noise::NoiseRng;

use fmn_testkit::{max_diff_f64, randn_f64 as randn};

#[test]
fn forward_matches_candle() {
    let mut rng = NoiseRng::new(3);
    for (shape, groups) in [
        (vec![2, 8, 5, 3], 4),
        (vec![1, 6, 7], 3),
        (vec![3, 4, 2, 2], 1),
    ] {
        let x = randn(&mut rng, &shape).affine(3.0, 1.0).unwrap();
        let w = randn(&mut rng, &[shape[1]]);
        let b = randn(&mut rng, &[shape[1]]);
        let ours = group_norm(&x, groups, &w, &b, 1e-5).unwrap();
        let reference = candle_nn::GroupNorm::new(w, b, shape[1], groups, 1e-5)
            .unwrap()
            .forward(&x)
            .unwrap();
        let err = max_diff_f64(&ours, &reference);
        assert!(err < 1e-12, "{shape:?}: {err}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = NoiseRng::new(4);
    let shape = [2, 6, 3, 4];
    let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
    let w = Var::from_tensor(&randn(&mut rng, &[6])).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, &[6])).unwrap();
    let probe = randn(&mut rng, &shape);
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> Tensor {
        (group_norm(x, 3, w, b, 1e-5).unwrap() * &probe)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(x.as_tensor(), w.as_tensor(), b.as_tensor())
        .backward()
        .unwrap();
    for (k, var) in [&x, &w, &b].into_iter().enumerate() {
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for idx in (0..base.len()).step_by(5) {
            let at = |d: f64| {
                let mut v = base.clone();
                v[idx] += d;
                let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap();
                let args = match k {
                    0 => (t, w.as_tensor().clone(), b.as_tensor().clone()),
                    1 => (x.as_tensor().clone(), t, b.as_tensor().clone()),
                    _ => (x.as_tensor().clone(), w.as_tensor().clone(), t),
                };
                loss(&args.0, &args.1, &args.2).to_scalar::<f64>().unwrap()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            assert!(
                (fd - g[idx]).abs() < 1e-5 * (1.0 + fd.abs()),
                "input {k} [{idx}]: {} vs {fd}",
                g[idx]
            );
        }
    }
}

#[test]
fn frozen_weight_and_bias_get_no_gradient_and_the_same_input_gradient() {
    let mut rng = NoiseRng::new(5);
    // Spatial size 37: the lane sums' tail is used too.
    let shape = [2, 4, 37];
    let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
    let (w0, b0) = (randn(&mut rng, &[4]), randn(&mut rng, &[4]));
    let probe = randn(&mut rng, &shape);
    let dx = |w: &Tensor, b: &Tensor| {
        let grads = (group_norm(x.as_tensor(), 2, w, b, 1e-5).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (grads.get(x.as_tensor()).unwrap().clone(), grads)
    };
    let (frozen_dx, frozen) = dx(&w0, &b0);
    assert!(frozen.get(&w0).is_none() && frozen.get(&b0).is_none());
    let (w, b) = (
        Var::from_tensor(&w0).unwrap(),
        Var::from_tensor(&b0).unwrap(),
    );
    let (trained_dx, trained) = dx(w.as_tensor(), b.as_tensor());
    assert!(trained.get(w.as_tensor()).is_some() && trained.get(b.as_tensor()).is_some());
    assert_eq!(
        frozen_dx.to_vec3::<f64>().unwrap(),
        trained_dx.to_vec3::<f64>().unwrap()
    );
}
