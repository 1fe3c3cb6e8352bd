//! The anchor solve against a hand-computed case and against the gradient of the two terms it
//! minimises (zero at the minimiser; the terms are the training loss's own functions).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_resteer::loss::{anchor_offsets, anchoring, preservation};
use fmn_resteer::preserve::Gram;
use fmn_resteer::solve::{anchor_solution_map, AnchorSolve};

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

/// `‖C(I + G)ᵀ − A‖² / ‖C − A‖²` from the rows themselves.
fn distance_to_targets(c: &Tensor, a: &Tensor, g: &Tensor) -> f64 {
    let moved = (c + c.matmul(&g.t().unwrap()).unwrap()).unwrap();
    let sq = |t: Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    sq((moved - a).unwrap()) / sq((c - a).unwrap())
}

#[test]
fn balanced_solve_reports_the_distances_its_map_gives() {
    let d = 8;
    let concepts = vec![
        (randn((12, d), 21), randn((12, d), 22)),
        (randn((6, d), 23), randn((6, d), 24)),
        (randn((9, d), 25), randn((9, d), 26)),
    ];
    let preserved = Gram::of(&randn((20, d), 27)).unwrap().mean().unwrap();
    let solved = AnchorSolve::new(&concepts, Some(&preserved))
        .unwrap()
        .balanced(1.0, 2.0)
        .unwrap();
    for (i, (c, a)) in concepts.iter().enumerate() {
        let direct = distance_to_targets(c, a, &solved.map);
        let (joint, alone) = solved.residuals[i];
        assert!(
            (direct - joint).abs() < 1e-4 * joint.max(1e-3),
            "{i}: {direct} vs {joint}"
        );
        // Alone: the same solve with only this concept, at the full weight.
        let g = anchor_solution_map(&[(c.clone(), a.clone())], Some(&preserved), 1.0, 2.0).unwrap();
        let direct_alone = distance_to_targets(c, a, &g);
        assert!(
            (direct_alone - alone).abs() < 1e-4 * alone.max(1e-3),
            "{i}: {direct_alone} vs {alone}"
        );
        // Each concept ends within 5 % of alone, or its weight reached the cap.
        let w = solved.weights[i];
        assert!((1.0 / 3.0 - 1e-12..=1.0).contains(&w), "{w}");
        assert!(
            joint <= 1.05 * alone + 1e-9 || (w - 1.0).abs() < 1e-12,
            "{i}: {joint} vs {alone} at {w}"
        );
    }
}

#[test]
fn balanced_solve_of_unrelated_concepts_is_each_concept_alone() {
    // Rows on disjoint axes and an isotropic preservation term: the concepts do not interact,
    // so each needs about its full weight to end where it would alone (the mean, 1/2, leaves
    // it further); everything per axis by hand.
    let dev = Device::Cpu;
    let c1 = Tensor::new(&[[2f32, 0.0, 0.0]], &dev).unwrap();
    let a1 = Tensor::new(&[[-1f32, 0.0, 0.0]], &dev).unwrap();
    let c2 = Tensor::new(&[[0f32, 1.0, 0.0]], &dev).unwrap();
    let a2 = Tensor::new(&[[0f32, 3.0, 0.0]], &dev).unwrap();
    let preserved = Tensor::eye(3, DType::F32, &dev).unwrap();
    let (aw, pw) = (2.0, 1.5);
    let solved = AnchorSolve::new(&[(c1, a1), (c2, a2)], Some(&preserved))
        .unwrap()
        .balanced(aw, pw)
        .unwrap();
    // Per axis: c → c(1 + G) with G = w·(t − c)·c / (w·c² + p); distance (c(1 + G) − t)² / (c − t)².
    let by_hand = |w: f64, c: f64, t: f64| {
        let g = w * (t - c) * c / (w * c * c + pw);
        (g, (c * (1.0 + g) - t).powi(2) / (c - t).powi(2))
    };
    let g = solved.map.to_vec2::<f32>().unwrap();
    for (i, (c, t)) in [(2.0, -1.0), (1.0, 3.0)].into_iter().enumerate() {
        let w = solved.weights[i];
        assert!(
            w > aw / 2.0 && w <= aw,
            "{i}: weight {w} not raised from the mean"
        );
        let (gii, joint) = by_hand(w, c, t);
        let (_, alone) = by_hand(aw, c, t);
        assert!((g[i][i] as f64 - gii).abs() < 1e-6, "{g:?} vs {gii}");
        assert!(
            (solved.residuals[i].0 - joint).abs() < 1e-6
                && (solved.residuals[i].1 - alone).abs() < 1e-9
        );
        assert!(joint <= 1.05 * alone + 1e-12, "{i}: {joint} vs {alone}");
        // At the mean weight it was further than 5 % from alone (what made the raise needed).
        assert!(by_hand(aw / 2.0, c, t).1 > 1.05 * alone);
    }
}

#[test]
fn balanced_solve_of_one_concept_is_the_plain_solve() {
    let d = 5;
    let concepts = vec![(randn((7, d), 31), randn((7, d), 32))];
    let preserved = Gram::of(&randn((10, d), 33)).unwrap().mean().unwrap();
    let solved = AnchorSolve::new(&concepts, Some(&preserved))
        .unwrap()
        .balanced(1.0, 4.0)
        .unwrap();
    assert_eq!(solved.weights, vec![1.0]);
    let plain = anchor_solution_map(&concepts, Some(&preserved), 1.0, 4.0).unwrap();
    let diff = (solved.map - plain)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}
