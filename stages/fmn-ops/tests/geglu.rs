//! The GEGLU op against candle's composed `h · gelu_erf(g)` (values in f64 to 1e-12, f32 within
//! the vectorised erf's error; gradients too) and central finite differences (f64, to 1e-6).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Tensor, Var, D};
use fmn_ops::geglu::geglu;
use fmn_testkit::{max_diff_f64, seeded_randn_f64};

fn composed(x: &Tensor) -> Tensor {
    let halves = x.chunk(2, D::Minus1).unwrap();
    halves[0].mul(&halves[1].gelu_erf().unwrap()).unwrap()
}

fn weighted_sum(y: &Tensor, w: &Tensor) -> Tensor {
    (y * w).unwrap().sum_all().unwrap()
}

#[test]
fn values_and_gradients_equal_the_composed_ops_in_f64() {
    // Rows of 2·37 (vector lanes and a tail), values up to about ±8 (both GELU tails).
    let x = Var::from_tensor(&(seeded_randn_f64(&[3, 5, 74], 1) * 3.0).unwrap()).unwrap();
    let w = seeded_randn_f64(&[3, 5, 37], 2);
    let ours = geglu(&x).unwrap();
    let theirs = composed(&x);
    assert!(max_diff_f64(&ours, &theirs) < 1e-12);
    let g1 = weighted_sum(&ours, &w).backward().unwrap();
    let g2 = weighted_sum(&theirs, &w).backward().unwrap();
    let (a, b) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
    // candle's GELU backward rounds 1/√(2π) to 0.398942 (relative 7e-7 on that term); the
    // finite differences below are the exact reference.
    assert!(max_diff_f64(a, b) < 1e-5, "{}", max_diff_f64(a, b));
    // Central differences on a spread of entries of both halves.
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let grad: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
    let loss = |v: &[f64]| -> f64 {
        let t = Tensor::from_slice(v, x.shape(), x.device()).unwrap();
        weighted_sum(&geglu(&t).unwrap(), &w).to_scalar().unwrap()
    };
    for i in (0..base.len()).step_by(23) {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += 1e-6;
        minus[i] -= 1e-6;
        let fd = (loss(&plus) - loss(&minus)) / 2e-6;
        assert!(
            (fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "entry {i}: {fd} vs {}",
            grad[i]
        );
    }
}

#[test]
fn f32_is_within_the_vectorised_erfs_error() {
    let x64 = (seeded_randn_f64(&[64, 2 * 300], 3) * 3.0).unwrap();
    let w64 = seeded_randn_f64(&[64, 300], 4);
    let x = Var::from_tensor(&x64.to_dtype(DType::F32).unwrap()).unwrap();
    let w = w64.to_dtype(DType::F32).unwrap();
    let ours = geglu(&x).unwrap();
    let g = weighted_sum(&ours, &w).backward().unwrap();
    // The f64 reference from the same (f32-rounded) inputs.
    let xr = Var::from_tensor(&x.to_dtype(DType::F64).unwrap()).unwrap();
    let reference = composed(&xr);
    let gr = weighted_sum(&reference, &w64).backward().unwrap();
    // erf to 1.5e-7 absolute: Φ to 7.5e-8, times |h·g| ≤ ~150 here, plus f32 rounding.
    let value_err = max_diff_f64(&ours.to_dtype(DType::F64).unwrap(), &reference);
    assert!(value_err < 2e-5, "{value_err}");
    let grad_err = max_diff_f64(
        &g.get(&x).unwrap().to_dtype(DType::F64).unwrap(),
        gr.get(&xr).unwrap(),
    );
    assert!(grad_err < 2e-5, "{grad_err}");
}

#[test]
fn an_odd_last_dimension_is_an_error() {
    let x = Tensor::zeros((2, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = geglu(&x).unwrap_err().to_string();
    assert!(err.contains("last dimension (5) must be even"), "{err}");
}
