//! The BLAS products (fmn-ops' `blas`) against a triple loop written here, over every layout
//! the ops pass (row-major, transposed, row-strided), accumulating or not, split over threads
//! or not; and the tensor-level product and the both-operands-trained matmul against candle.
//! When `FMN_BLAS` names a library (scripts/test.sh installs one) it must be the one in use,
//! so these tests run the BLAS path and not only the `gemm` crate fallback.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Tensor, Var};
use fmn_ops::blas::{backend, gemm, gemm_parallel, product, MatRef};
use fmn_testkit::{max_diff_f64, seeded_randn_f64};

fn values(n: usize, seed: u64) -> Vec<f64> {
    seeded_randn_f64(&[n], seed).to_vec1().unwrap()
}

/// `factor · a · b (+ c0)` by the definition, in f64.
fn reference(a: &MatRef<f64>, b: &MatRef<f64>, c0: Option<&[f64]>, factor: f64) -> Vec<f64> {
    let mut c = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut s = 0.0;
            for l in 0..a.cols {
                s += a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs];
            }
            c[i * b.cols + j] = factor * s + c0.map_or(0.0, |c0| c0[i * b.cols + j]);
        }
    }
    c
}

/// A `rows × cols` view over fresh values: row-major, transposed storage, or rows `pad` apart.
fn matrix(data: &[f64], rows: usize, cols: usize, layout: &str) -> MatRef<'static, f64> {
    let data: &'static [f64] = Box::leak(data.to_vec().into_boxed_slice());
    match layout {
        "row" => MatRef::new(data, rows, cols),
        "transposed" => MatRef::new(data, cols, rows).t(),
        _ => MatRef {
            data,
            rows,
            cols,
            rs: cols + 3,
            cs: 1,
        },
    }
}

#[test]
fn the_library_named_by_fmn_blas_is_the_one_in_use() {
    match std::env::var("FMN_BLAS") {
        Ok(name) if !name.is_empty() && name != "none" => {
            let blas = backend()
                .unwrap()
                .expect("FMN_BLAS is set: a BLAS must be loaded");
            assert_eq!(blas.name(), name);
        }
        Ok(_) => assert!(backend().unwrap().is_none()),
        Err(_) => {}
    }
}

#[test]
fn gemm_equals_the_definition_for_every_layout() {
    let blas = backend().unwrap();
    let (m, k, n) = (131, 37, 70);
    let mut seed = 0;
    for la in ["row", "transposed", "strided"] {
        for lb in ["row", "transposed", "strided"] {
            for accumulate in [false, true] {
                for threads in [1, 2] {
                    seed += 3;
                    let a = matrix(&values(m * (k + 3), seed), m, k, la);
                    let b = matrix(&values((k + 3) * n, seed + 1), k, n, lb);
                    let c0 = values(m * n, seed + 2);
                    let want = reference(&a, &b, accumulate.then_some(&c0[..]), 0.7);
                    let mut got = c0.clone();
                    if threads == 1 {
                        gemm(blas, &mut got, a, b, accumulate, 0.7);
                    } else {
                        gemm_parallel(blas, &mut got, a, b, accumulate, 0.7, threads);
                    }
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        err < 1e-12,
                        "{la} × {lb}, accumulate {accumulate}, {threads} threads: {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_in_f32_is_within_rounding_of_the_definition() {
    let blas = backend().unwrap();
    let (m, k, n) = (200, 64, 90);
    let a64 = values(m * k, 11);
    let b64 = values(k * n, 12);
    let want = reference(
        &MatRef::new(&a64, m, k),
        &MatRef::new(&b64, k, n),
        None,
        1.0,
    );
    let a: Vec<f32> = a64.iter().map(|&x| x as f32).collect();
    let b: Vec<f32> = b64.iter().map(|&x| x as f32).collect();
    let mut got = vec![0f32; m * n];
    gemm_parallel(
        blas,
        &mut got,
        MatRef::new(&a, m, k),
        MatRef::new(&b, k, n),
        false,
        1.0,
        2,
    );
    let err = got
        .iter()
        .zip(&want)
        .map(|(&x, y)| (x as f64 - y).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-4, "{err}");
}

#[test]
fn product_equals_candles_matmul_for_views() {
    let a = seeded_randn_f64(&[40, 90], 21);
    let b = seeded_randn_f64(&[50, 40], 22);
    // a narrowed (row stride 90), b transposed.
    let a_view = a.narrow(1, 5, 30).unwrap();
    let b_view = b.t().unwrap().narrow(0, 3, 30).unwrap();
    for dtype in [DType::F64, DType::F32] {
        let (x, y) = (
            a_view.to_dtype(dtype).unwrap(),
            b_view.to_dtype(dtype).unwrap(),
        );
        let ours = product(&x, &y).unwrap().to_dtype(DType::F64).unwrap();
        let theirs = a_view.matmul(&b_view).unwrap();
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
        assert!(max_diff_f64(&ours, &theirs) < tol, "{dtype:?}");
    }
}

#[test]
fn product_of_broadcast_views_equals_candles_matmul() {
    // Zero strides: a row repeated down the rows, a column repeated across the columns (in
    // f64: `to_dtype` to f32 makes them contiguous).
    let row = seeded_randn_f64(&[1, 30], 41)
        .broadcast_as((20, 30))
        .unwrap();
    let col = seeded_randn_f64(&[30, 1], 42)
        .broadcast_as((30, 25))
        .unwrap();
    let full = seeded_randn_f64(&[30, 25], 43);
    for (a, b) in [(&row, &full), (&row, &col), (&full.t().unwrap(), &col)] {
        for dtype in [DType::F64, DType::F32] {
            let (x, y) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let ours = product(&x, &y).unwrap().to_dtype(DType::F64).unwrap();
            let theirs = a
                .contiguous()
                .unwrap()
                .matmul(&b.contiguous().unwrap())
                .unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            assert!(
                max_diff_f64(&ours, &theirs) < tol,
                "{:?} × {:?} {dtype:?}",
                a.layout(),
                b.layout()
            );
        }
    }
}

#[test]
fn both_operands_trained_gives_candles_gradients() {
    let a = Var::from_tensor(&seeded_randn_f64(&[6, 9], 31)).unwrap();
    let b = Var::from_tensor(&seeded_randn_f64(&[9, 4], 32)).unwrap();
    let w = seeded_randn_f64(&[6, 4], 33);
    let loss = |y: Tensor| (y * &w).unwrap().sum_all().unwrap();
    let ours = loss(fmn_ops::frozen_matmul::matmul(a.as_tensor(), b.as_tensor()).unwrap());
    let theirs = loss(a.as_tensor().matmul(b.as_tensor()).unwrap());
    let (g1, g2) = (ours.backward().unwrap(), theirs.backward().unwrap());
    for v in [&a, &b] {
        let (x, y) = (
            g1.get(v.as_tensor()).unwrap(),
            g2.get(v.as_tensor()).unwrap(),
        );
        assert!(max_diff_f64(x, y) < 1e-12);
    }
    // By hand for one entry: d/da[0][0] Σ (a b ∘ w) = Σ_j b[0][j] w[0][j].
    let (b0, w0): (Vec<f64>, Vec<f64>) = (
        b.as_tensor().get(0).unwrap().to_vec1().unwrap(),
        w.get(0).unwrap().to_vec1().unwrap(),
    );
    let by_hand: f64 = b0.iter().zip(&w0).map(|(x, y)| x * y).sum();
    let got: f64 = g1
        .get(a.as_tensor())
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((got - by_hand).abs() < 1e-12);
}
