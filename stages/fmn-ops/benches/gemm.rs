//! One f32 product through fmn-ops' `blas` with the `gemm` crate and with the loaded BLAS
//! (`FMN_BLAS`), on one thread and on all: GFLOPS, best of 3 after a warm-up.
//! `FMN_BLAS=$(scripts/install-openblas.sh) cargo bench -p fmn-ops --profile dev --bench gemm
//! [-- M K N]` (default 2048³; BENCHMARKS.md#faster-than-pytorch-side-by-side).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_ops::blas::{backend, gemm_parallel, Blas, MatRef};
use std::time::Instant;

fn gflops(blas: Option<&Blas>, threads: usize, (m, k, n): (usize, usize, usize)) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let start = Instant::now();
        gemm_parallel(
            blas,
            &mut c,
            MatRef::new(&a, m, k),
            MatRef::new(&b, k, n),
            false,
            1.0,
            threads,
        );
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let dims = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (2048, 2048, 2048),
    };
    let threads = candle_core::utils::get_num_threads();
    let blas = backend().expect("FMN_BLAS names a loadable library (or is unset)");
    for t in [1, threads] {
        println!(
            "gemm crate {dims:?} threads={t}: {:.1} GFLOPS",
            gflops(None, t, dims)
        );
        if let Some(lib) = blas {
            println!(
                "{} {dims:?} threads={t}: {:.1} GFLOPS",
                lib.name(),
                gflops(Some(lib), t, dims)
            );
        }
    }
}
