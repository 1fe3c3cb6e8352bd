//! fmn's linear layer (on the frozen-operand matmul) equals candle-nn's, with the weight frozen
//! or trained.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Module, Tensor, Var};
use fmn_sd::models::nn::Linear;
use fmn_testkit::{max_diff_f64 as max_diff, seeded_randn_f64};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    seeded_randn_f64(shape, seed)
}

#[test]
fn linear_layer_matches_candle_nn_with_frozen_or_trained_weights() {
    let (w, bias) = (randn(&[4, 6], 3), randn(&[4], 4));
    let x = Var::from_tensor(&randn(&[2, 3, 6], 5)).unwrap();
    let ours = Linear::new(w.clone(), Some(bias.clone()));
    let theirs = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
    let (y, y_ref) = (
        ours.forward(x.as_tensor()).unwrap(),
        theirs.forward(x.as_tensor()).unwrap(),
    );
    assert_eq!(y.dims(), &[2, 3, 4]);
    assert!(max_diff(&y, &y_ref) < 1e-12);
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = y_ref.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        max_diff(
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap()
        ) < 1e-12
    );
    assert!(g.get(&w).is_none());

    // Trained weight, constant input: the weight's gradient as candle's.
    let wv = Var::from_tensor(&w).unwrap();
    let x0 = randn(&[2, 3, 6], 6);
    let ours = Linear::new(wv.as_tensor().clone(), None);
    let theirs = candle_nn::Linear::new(wv.as_tensor().clone(), None);
    let g = ours
        .forward(&x0)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = theirs
        .forward(&x0)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(
        max_diff(
            g.get(wv.as_tensor()).unwrap(),
            g_ref.get(wv.as_tensor()).unwrap()
        ) < 1e-12
    );
}
