//! The im2col convolution equals candle's convolution, and its gradients match finite
//! differences (f64).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor, Var};
use fmn_ops::conv::conv2d;
use fmn_ops::noise::NoiseRng;

use fmn_testkit::{max_diff_f64 as max_diff, randn_f64 as randn};

#[test]
fn forward_matches_candle_for_strides_paddings_and_odd_sizes() {
    let mut rng = NoiseRng::new(1);
    for (shape, k, stride, pad) in [
        ([2, 3, 7, 5], 3, 1, 1),
        ([1, 4, 8, 8], 3, 2, 1),
        ([1, 4, 9, 6], 3, 2, 0),
        ([2, 5, 4, 4], 1, 1, 0),
        ([1, 2, 5, 5], 2, 1, 0),
    ] {
        let x = randn(&mut rng, &shape);
        let w = randn(&mut rng, &[6, shape[1], k, k]);
        let ours = conv2d(&x, &w, stride, pad).unwrap();
        let candle = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        assert_eq!(ours.dims(), candle.dims());
        assert!(
            max_diff(&ours, &candle) < 1e-12,
            "{shape:?} k{k} s{stride} p{pad}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = NoiseRng::new(2);
    for (shape, k, stride, pad) in [
        ([2, 3, 6, 5], 3, 1, 1),
        ([1, 2, 7, 6], 3, 2, 1),
        ([1, 2, 5, 4], 3, 2, 0),
    ] {
        let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, &[4, shape[1], k, k])).unwrap();
        let probe = randn(&mut rng, conv2d(&x, &w, stride, pad).unwrap().dims());
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            (conv2d(x, w, stride, pad).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let grads = (conv2d(x.as_tensor(), w.as_tensor(), stride, pad).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (var, is_x) in [(&x, true), (&w, false)] {
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
            for idx in (0..base.len()).step_by(7) {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[idx] += d;
                    let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap();
                    if is_x {
                        loss(&t, w.as_tensor())
                    } else {
                        loss(x.as_tensor(), &t)
                    }
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{shape:?} {} [{idx}]: {} vs {fd}",
                    if is_x { "x" } else { "w" },
                    g[idx]
                );
            }
        }
    }
}
