//! The fused attention op equals softmax(q kᵀ·s) v composed of candle ops, and its gradients
//! equal both the composed graph's and finite differences (f64).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::fused_attention::attention;
use fmn_ops::noise::NoiseRng;
use fmn_ops::softmax::softmax_last_dim;

use fmn_testkit::{max_diff_f64 as max_diff, randn_f64 as randn};

fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
    let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
    softmax_last_dim(&s).unwrap().matmul(v).unwrap()
}

#[test]
fn forward_and_gradients_match_the_composed_graph() {
    let mut rng = NoiseRng::new(7);
    // Self-attention shape, a cross-attention shape with M != N, and more query rows than one
    // block (64) holds, the last block partial.
    for (bh, n, m, d) in [(3, 9, 9, 4), (2, 6, 11, 5), (2, 150, 7, 3)] {
        let q = Var::from_tensor(&(randn(&mut rng, &[bh, n, d]) * 2.0).unwrap()).unwrap();
        let k = Var::from_tensor(&randn(&mut rng, &[bh, m, d])).unwrap();
        let v = Var::from_tensor(&randn(&mut rng, &[bh, m, d])).unwrap();
        let probe = randn(&mut rng, &[bh, n, d]);
        let scale = 1.0 / (d as f64).sqrt();
        let ours = attention(&q, &k, &v, scale).unwrap();
        let reference = composed(&q, &k, &v, scale);
        assert!(max_diff(&ours, &reference) < 1e-12);
        let g1 = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let a = g1.get(var).unwrap();
            let b = g2.get(var).unwrap();
            assert!(max_diff(a, b) < 1e-12, "d{name}: {}", max_diff(a, b));
        }
        // Finite differences on a few entries of each input.
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
            (attention(q, k, v, scale).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        for (which, var) in [(0, &q), (1, &k), (2, &v)] {
            let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            let grad: Vec<f64> = g1
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for idx in [0, base.len() / 2, base.len() - 1] {
                let eps = 1e-6;
                let bumped = |delta: f64| {
                    let mut x = base.clone();
                    x[idx] += delta;
                    let t = Tensor::from_vec(x, var.dims(), &Device::Cpu).unwrap();
                    match which {
                        0 => loss(&t, &k, &v),
                        1 => loss(&q, &t, &v),
                        _ => loss(&q, &k, &t),
                    }
                };
                let fd = (bumped(eps) - bumped(-eps)) / (2.0 * eps);
                assert!(
                    (fd - grad[idx]).abs() < 1e-7,
                    "input {which}[{idx}]: fd {fd} vs {}",
                    grad[idx]
                );
            }
        }
    }
}

#[test]
fn f32_matches_f64() {
    let mut rng = NoiseRng::new(8);
    let q = randn(&mut rng, &[2, 16, 8]);
    let k = randn(&mut rng, &[2, 16, 8]);
    let v = randn(&mut rng, &[2, 16, 8]);
    let f64_out = attention(&q, &k, &v, 0.35).unwrap();
    let f32_out = attention(
        &q.to_dtype(DType::F32).unwrap(),
        &k.to_dtype(DType::F32).unwrap(),
        &v.to_dtype(DType::F32).unwrap(),
        0.35,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap();
    assert!(max_diff(&f64_out, &f32_out) < 1e-5);
}
