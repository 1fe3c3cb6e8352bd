//! The vectorised f32 `exp` and row softmax against f64 (libm) computed here.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_ops::softmax_rows::SoftmaxRows;
use fmn_ops::vmath::exp;

#[test]
fn exp_is_within_a_few_ulp_of_libm_over_the_softmax_range() {
    let mut worst = 0f64;
    for i in 0..=1_000_000 {
        let x = -87.0 * i as f32 / 1e6;
        let want = (x as f64).exp();
        worst = worst.max(((exp(x) as f64) - want).abs() / want);
    }
    // f32 rounding alone is 6·10⁻⁸; Cephes' expf is within 2 ulp.
    assert!(worst < 2.5e-7, "{worst}");
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(-100.0), 0.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
}

#[test]
fn softmax_rows_equal_the_definition() {
    // Rows of 37 (two lanes of 16 and a tail) with a large spread, one row all equal.
    let m = 37;
    let mut p: Vec<f32> = (0..3 * m)
        .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 20.0)
        .collect();
    p[2 * m..].iter_mut().for_each(|x| *x = 5.0);
    let input = p.clone();
    f32::softmax_rows(&mut p, m);
    for (row_in, row_out) in input.chunks(m).zip(p.chunks(m)) {
        let max = row_in
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let sum: f64 = row_in.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (&x, &y) in row_in.iter().zip(row_out) {
            let want = (x as f64 - max).exp() / sum;
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.max(1e-30) + 1e-12,
                "{y} vs {want}"
            );
        }
    }
    let mut f64_rows: Vec<f64> = input.iter().map(|&x| x as f64).collect();
    f64::softmax_rows(&mut f64_rows, m);
    assert!((f64_rows[2 * m] - 1.0 / m as f64).abs() < 1e-15);
}
