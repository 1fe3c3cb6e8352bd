//! `add_bias` and `scale_shift` equal candle's broadcast ops, and their gradients equal the
//! composed graph's and finite differences (f64), over more rows than one parallel task holds.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_ops::row_affine::{add_bias, scale_shift};

use fmn_testkit::{max_diff_f64 as max_diff, randn_f64 as randn};

fn weighted_sum(t: &Tensor, probe: &Tensor) -> Tensor {
    (t * probe).unwrap().sum_all().unwrap()
}

#[test]
fn forward_and_gradients_match_broadcast_ops_and_finite_differences() {
    let mut rng = NoiseRng::new(11);
    // 3 × 200 = 600 rows: three parallel tasks of at most 256 rows, the last partial.
    let shape = [3, 200, 5];
    let x = Var::from_tensor(&randn(&mut rng, &shape)).unwrap();
    let w = Var::from_tensor(&randn(&mut rng, &[5])).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, &[5])).unwrap();
    let probe = randn(&mut rng, &shape);

    let ours = scale_shift(&x, &w, &b).unwrap();
    let reference = x.broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
    assert!(max_diff(&ours, &reference) < 1e-14);
    let g1 = weighted_sum(&ours, &probe).backward().unwrap();
    let g2 = weighted_sum(&reference, &probe).backward().unwrap();
    for (name, var) in [("x", &x), ("w", &w), ("b", &b)] {
        let d = max_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
        assert!(d < 1e-12, "scale_shift d{name}: {d}");
    }

    let ours = add_bias(&x, &b).unwrap();
    let reference = x.broadcast_add(&b).unwrap();
    assert!(max_diff(&ours, &reference) < 1e-14);
    let g1 = weighted_sum(&ours, &probe).backward().unwrap();
    let g2 = weighted_sum(&reference, &probe).backward().unwrap();
    for (name, var) in [("x", &x), ("b", &b)] {
        let d = max_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
        assert!(d < 1e-12, "add_bias d{name}: {d}");
    }

    // Finite differences of scale_shift in w and b (their gradients are the new sums).
    let grads = weighted_sum(&scale_shift(&x, &w, &b).unwrap(), &probe)
        .backward()
        .unwrap();
    for (which, var) in [(0, &w), (1, &b)] {
        let base: Vec<f64> = var.to_vec1().unwrap();
        let grad: Vec<f64> = grads.get(var).unwrap().to_vec1().unwrap();
        for idx in 0..base.len() {
            let eps = 1e-6;
            let bumped = |delta: f64| -> f64 {
                let mut p = base.clone();
                p[idx] += delta;
                let p = Tensor::new(p.as_slice(), &Device::Cpu).unwrap();
                let y = match which {
                    0 => scale_shift(&x, &p, &b),
                    _ => scale_shift(&x, &w, &p),
                }
                .unwrap();
                weighted_sum(&y, &probe).to_scalar().unwrap()
            };
            let fd = (bumped(eps) - bumped(-eps)) / (2.0 * eps);
            assert!(
                (fd - grad[idx]).abs() < 1e-6,
                "param {which}[{idx}]: fd {fd} vs {}",
                grad[idx]
            );
        }
    }
}

#[test]
fn a_parameter_of_the_wrong_width_is_an_error() {
    let x = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
    let err = add_bias(&x, &b).unwrap_err().to_string();
    assert!(err.contains("does not match the last dimension 3"), "{err}");
}
