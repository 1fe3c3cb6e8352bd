//! The anchor solve against a hand-computed case and against the gradient of the two terms it
//! minimises (zero at the minimiser; the terms are the training loss's own functions).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_resteer::loss::{anchor_offsets, anchoring, preservation};
use fmn_resteer::preserve::Gram;
use fmn_resteer::solve::anchor_solution_map;

#[test]
fn one_dimensional_case_by_hand() {
    let dev = Device::Cpu;
    // d = 1: M = a/r_c (c1² + c2²) + p/r_P p², S = a/r_c ((a1 − c1) c1 + (a2 − c2) c2).
    let c = Tensor::new(&[[2f32], [1.0]], &dev).unwrap();
    let a = Tensor::new(&[[0.5f32], [3.0]], &dev).unwrap();
    let p = Tensor::new(&[[4f32]], &dev).unwrap();
    let p = Gram::of(&p).unwrap().mean().unwrap();
    let g = anchor_solution_map(&[(c, a)], Some(&p), 3.0, 0.5).unwrap();
    let m = 3.0 / 2.0 * (4.0 + 1.0) + 0.5 * 16.0;
    let s = 3.0 / 2.0 * ((0.5 - 2.0) * 2.0 + (3.0 - 1.0) * 1.0);
    let got = g.to_vec2::<f32>().unwrap()[0][0] as f64;
    assert!((got - s / m).abs() < 1e-6, "{got} vs {}", s / m);
}

fn randn(shape: (usize, usize), seed: u64) -> Tensor {
    NoiseRng::new(seed)
        .randn(&[shape.0, shape.1], &Device::Cpu)
        .unwrap()
}

#[test]
fn the_solution_zeroes_the_gradient_of_the_anchor_and_preservation_terms() {
    let d = 6;
    let concepts = vec![
        (randn((9, d), 1), randn((9, d), 2)),
        (randn((4, d), 3), randn((4, d), 4)),
    ];
    let preserved = randn((12, d), 5);
    let weights = [randn((5, d), 6), randn((3, d), 7)];
    let (aw, pw) = (2.0, 0.7);
    let preserved_gram = Gram::of(&preserved).unwrap().mean().unwrap();
    let g = anchor_solution_map(&concepts, Some(&preserved_gram), aw, pw).unwrap();
    // The two terms in f64 (the training loss's own functions), so that the gradient at the
    // minimiser is zero up to the f32 rounding of the map.
    let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let w64: Vec<Tensor> = weights.iter().map(f64_of).collect();
    let w_refs: Vec<&Tensor> = w64.iter().collect();
    let loss = |deltas: &[Tensor]| {
        let mut loss = (preservation(&preserved_gram, deltas).unwrap() * pw).unwrap();
        for (c, a) in &concepts {
            let offsets = anchor_offsets(&f64_of(c), &f64_of(a), &w_refs).unwrap();
            loss =
                (loss + (anchoring(&f64_of(c), deltas, &offsets).unwrap() * aw).unwrap()).unwrap();
        }
        loss
    };
    let value = |deltas: &[Tensor]| loss(deltas).to_scalar::<f64>().unwrap();
    let grad_norm = |deltas: &[Tensor]| {
        let vars: Vec<Var> = deltas
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ds: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = loss(&ds).backward().unwrap();
        let squares: f64 = vars
            .iter()
            .map(|v| {
                let g = grads.get(v.as_tensor()).unwrap();
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            })
            .sum();
        squares.sqrt()
    };
    let solved: Vec<Tensor> = w64.iter().map(|w| w.matmul(&f64_of(&g)).unwrap()).collect();
    let zero: Vec<Tensor> = w64.iter().map(|w| w.zeros_like().unwrap()).collect();
    let at_zero = grad_norm(&zero);
    let at_solution = grad_norm(&solved);
    assert!(
        at_zero > 1e-2,
        "the test case has no gradient at zero: {at_zero}"
    );
    assert!(
        at_solution < 1e-5 * at_zero,
        "gradient {at_solution} at the solution vs {at_zero} at zero"
    );
    // And the loss there is lower than at zero and at nearby points.
    let best = value(&solved);
    assert!(best < value(&zero));
    for seed in 10..14 {
        let nudged: Vec<Tensor> = solved
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (r, c) = s.dims2().unwrap();
                (s + f64_of(&randn((r, c), seed * 7 + i as u64)) * 1e-2).unwrap()
            })
            .collect();
        assert!(value(&nudged) > best);
    }
}

#[test]
fn rows_that_do_not_span_the_context_space_still_solve() {
    // One row in 4 dimensions, no preserved prompts: only the row's direction gets a delta.
    let c = Tensor::new(&[[1f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let a = Tensor::new(&[[0f32, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let g = anchor_solution_map(&[(c, a)], None, 1.0, 1.0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // W (W + Δ) c = W a with Δ = W G: G = (a − c) cᵀ / |c|² = first column (−1, 1, 0, 0).
    let expected = [
        [-1f32, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ];
    for (row, want) in g.iter().zip(expected) {
        for (x, y) in row.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{g:?}");
        }
    }
}
