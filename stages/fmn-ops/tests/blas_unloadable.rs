//! A library named by `FMN_BLAS` that cannot be loaded as a BLAS is an error naming it, in every
//! op that would use it: never a silent fallback. One process per setting (the choice is made
//! once per process), so each case is its own test binary run of this file's one test.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor};

#[test]
fn a_missing_or_foreign_library_is_refused_with_its_name() {
    let me = std::env::current_exe().unwrap();
    if let Ok(name) = std::env::var("FMN_BLAS_UNDER_TEST") {
        // The child: FMN_BLAS was set by the parent before this process started.
        let why = std::env::var("FMN_BLAS_WHY").unwrap();
        let err = fmn_ops::blas::backend()
            .err()
            .expect("an error")
            .to_string();
        assert!(
            err.contains(&format!("FMN_BLAS={name}")) && err.contains(&why),
            "{err}"
        );
        let a = Tensor::ones((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = fmn_ops::blas::product(&a, &a)
            .expect_err("an error")
            .to_string();
        assert!(err.contains("cannot load it as a BLAS library"), "{err}");
        return;
    }
    // A path that does not exist, and a real library without CBLAS (the C maths library).
    for (name, why) in [
        ("/nonexistent/libopenblas.so", "No such file"),
        ("libm.so.6", "no cblas_sgemm"),
    ] {
        let out = std::process::Command::new(&me)
            .args([
                "--exact",
                "a_missing_or_foreign_library_is_refused_with_its_name",
                "--nocapture",
            ])
            .env("FMN_BLAS", name)
            .env("FMN_BLAS_UNDER_TEST", name)
            .env("FMN_BLAS_WHY", why)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {text}");
    }
}
