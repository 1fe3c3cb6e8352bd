//! The frozen-operand matmul equals candle's matmul in value and in the gradient of the operand
//! that trains, and computes no gradient for the constant one.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Tensor, Var};
use fmn_ops::frozen_matmul::matmul;
use fmn_testkit::{max_diff_f64 as max_diff, seeded_randn_f64};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    seeded_randn_f64(shape, seed)
}

#[test]
fn either_operand_constant_gives_candles_value_and_gradient() {
    let w_out = randn(&[5, 3], 9);
    for trained_left in [true, false] {
        let (a0, b0) = (randn(&[5, 7], 1), randn(&[7, 3], 2));
        let var = Var::from_tensor(if trained_left { &a0 } else { &b0 }).unwrap();
        let (a, b) = if trained_left {
            (var.as_tensor().clone(), b0.clone())
        } else {
            (a0.clone(), var.as_tensor().clone())
        };
        let ours = matmul(&a, &b).unwrap();
        let reference = a.matmul(&b).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-12);

        let g_ours = (ours * &w_out)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (reference * &w_out)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = g_ours
            .get(var.as_tensor())
            .expect("the trained operand's gradient");
        let want = g_ref.get(var.as_tensor()).unwrap();
        assert!(max_diff(got, want) < 1e-12, "trained_left {trained_left}");
        let constant = if trained_left { &b } else { &a };
        assert!(
            g_ref.get(constant).is_some(),
            "candle computes the constant's gradient"
        );
        assert!(
            g_ours.get(constant).is_none(),
            "no gradient is computed for the constant operand"
        );
    }
}
