//! The im2col convolution equals candle's convolution, and its gradients match finite
//! differences (f64).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor, Var};
use fmn_ops::conv::{conv2d, conv2d_with, Conv2dSpec};
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

/// The dilated convolutions (stride, padding, dilation, kernel) the tests below check.
const DILATED: [([usize; 4], usize, Conv2dSpec); 5] = [
    (
        [2, 3, 9, 10],
        3,
        Conv2dSpec {
            stride: 1,
            padding: 2,
            dilation: 2,
        },
    ),
    (
        [1, 4, 11, 9],
        3,
        Conv2dSpec {
            stride: 2,
            padding: 1,
            dilation: 2,
        },
    ),
    (
        [1, 2, 12, 12],
        3,
        Conv2dSpec {
            stride: 1,
            padding: 0,
            dilation: 3,
        },
    ),
    (
        [2, 3, 8, 7],
        2,
        Conv2dSpec {
            stride: 3,
            padding: 1,
            dilation: 2,
        },
    ),
    (
        [1, 3, 6, 6],
        3,
        Conv2dSpec {
            stride: 1,
            padding: 1,
            dilation: 1,
        },
    ),
];

#[test]
fn dilated_forward_with_bias_matches_candle() {
    let mut rng = NoiseRng::new(3);
    for (shape, k, spec) in DILATED {
        let x = randn(&mut rng, &shape);
        let w = randn(&mut rng, &[5, shape[1], k, k]);
        let b = randn(&mut rng, &[5]);
        let ours = conv2d_with(&x, &w, Some(&b), spec).unwrap();
        let candle = x
            .conv2d(&w, spec.padding, spec.stride, spec.dilation, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), candle.dims(), "{shape:?} k{k} {spec:?}");
        assert!(max_diff(&ours, &candle) < 1e-12, "{shape:?} k{k} {spec:?}");
        // Without a bias, and through the stride/padding shorthand at dilation 1.
        let plain = conv2d_with(&x, &w, None, spec).unwrap();
        let candle = x
            .conv2d(&w, spec.padding, spec.stride, spec.dilation, 1)
            .unwrap();
        assert!(max_diff(&plain, &candle) < 1e-12, "{shape:?} k{k} {spec:?}");
        if spec.dilation == 1 {
            let short = conv2d(&x, &w, spec.stride, spec.padding).unwrap();
            assert!(max_diff(&short, &plain) == 0.0);
        }
    }
}

#[test]
fn dilated_gradients_match_finite_differences() {
    let mut rng = NoiseRng::new(4);
    for (shape, k, spec) in DILATED {
        let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, &[3, shape[1], k, k])).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, &[3])).unwrap();
        let y = conv2d_with(&x, &w, Some(&b), spec).unwrap();
        let probe = randn(&mut rng, y.dims());
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            (conv2d_with(x, w, Some(b), spec).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (which, var) in [("x", &x), ("w", &w), ("b", &b)] {
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
                    match which {
                        "x" => loss(&t, w.as_tensor(), b.as_tensor()),
                        "w" => loss(x.as_tensor(), &t, b.as_tensor()),
                        _ => loss(x.as_tensor(), w.as_tensor(), &t),
                    }
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!(
                    (fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{shape:?} k{k} {spec:?} {which}[{idx}]: {} vs {fd}",
                    g[idx]
                );
            }
        }
    }
}

#[test]
fn bad_specs_are_errors() {
    let mut rng = NoiseRng::new(5);
    let x = randn(&mut rng, &[1, 2, 5, 5]);
    let w = randn(&mut rng, &[3, 2, 3, 3]);
    for spec in [
        Conv2dSpec::new(0, 1),
        Conv2dSpec::new(1, 0).dilated(0),
        // A 3x3 kernel with dilation 3 reaches 7 pixels: more than 5.
        Conv2dSpec::new(1, 0).dilated(3),
    ] {
        assert!(conv2d_with(&x, &w, None, spec).is_err(), "{spec:?}");
    }
    assert!(conv2d_with(&x, &w, None, Conv2dSpec::new(1, 1).dilated(3)).is_ok());
}

/// Without gradients the convolution takes its row-per-pixel path; it gives the same bits as
/// the path with gradients (and candle's values), in f32 and f64, with and without a bias.
#[test]
fn the_path_without_gradients_gives_the_same_bits() {
    let mut rng = NoiseRng::new(6);
    let cases: [([usize; 4], usize, usize, Conv2dSpec); 8] = [
        ([2, 3, 7, 5], 6, 3, Conv2dSpec::new(1, 1)),
        ([64, 3, 64, 64], 16, 4, Conv2dSpec::new(2, 1)),
        ([64, 16, 32, 32], 32, 3, Conv2dSpec::new(2, 1)),
        ([2, 32, 16, 16], 32, 3, Conv2dSpec::new(1, 2).dilated(2)),
        ([2, 5, 4, 4], 6, 1, Conv2dSpec::new(1, 0)),
        ([1, 4, 9, 6], 5, 3, Conv2dSpec::new(2, 0)),
        ([1, 64, 32, 32], 320, 3, Conv2dSpec::new(1, 1)),
        ([1, 320, 16, 16], 320, 1, Conv2dSpec::new(1, 0)),
    ];
    for (shape, o, k, spec) in cases {
        let x = randn(&mut rng, &shape)
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let w = randn(&mut rng, &[o, shape[1], k, k])
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let b = randn(&mut rng, &[o])
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let (x, w, b) = (
                x.to_dtype(dtype).unwrap(),
                w.to_dtype(dtype).unwrap(),
                b.to_dtype(dtype).unwrap(),
            );
            let wv = Var::from_tensor(&w).unwrap();
            for bias in [None, Some(&b)] {
                let plain = conv2d_with(&x, &w, bias, spec).unwrap();
                let graph = conv2d_with(&x, wv.as_tensor(), bias, spec).unwrap();
                assert_eq!(plain.dims(), graph.dims());
                let same = (plain
                    .flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F64))
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                    == graph
                        .flatten_all()
                        .unwrap()
                        .to_dtype(candle_core::DType::F64)
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap();
                assert!(
                    same,
                    "{shape:?} o{o} k{k} {spec:?} {dtype:?} bias {}",
                    bias.is_some()
                );
            }
        }
    }
}
