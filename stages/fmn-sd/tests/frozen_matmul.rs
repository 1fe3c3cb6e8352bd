//! The frozen-operand matmul equals candle's matmul in value and in the gradient of the operand
//! that trains, and computes no gradient for the constant one.
use candle_core::{DType, Device, Module, Tensor, Var};
use fmn_sd::frozen_matmul::matmul;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    fmn_sd::noise::NoiseRng::new(seed)
        .randn(shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
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

#[test]
fn linear_layer_matches_candle_nn_with_frozen_or_trained_weights() {
    let (w, bias) = (randn(&[4, 6], 3), randn(&[4], 4));
    let x = Var::from_tensor(&randn(&[2, 3, 6], 5)).unwrap();
    let ours = fmn_sd::nn::Linear::new(w.clone(), Some(bias.clone()));
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
    let ours = fmn_sd::nn::Linear::new(wv.as_tensor().clone(), None);
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
