//! The exact minimiser of the anchor and preservation terms over the key/value deltas: both
//! terms are quadratic in each delta `Δ: [inner, d]`, so
//!
//! `Σ_c a/r_c ‖C_c Δᵀ + (C_c − A_c) Wᵀ‖² + p/r_P ‖P Δᵀ‖²`
//!
//! is smallest at `Δ = W S M⁻¹` with `M = Σ_c a/r_c C_cᵀC_c + p/r_P PᵀP` and
//! `S = Σ_c a/r_c (A_c − C_c)ᵀ C_c` (both `[d, d]`, shared by every K/V weight). Starting the
//! re-steering steps there replaces the many optimiser steps these two terms would take (and do
//! not finish in 50: BENCHMARKS.md#re-steering-preset-how-it-was-chosen).
use candle_core::{DType, Device, Result, Tensor};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// Relative ridge added to `M`'s diagonal: keeps the solve defined when the rows do not span the
/// context space (directions no row reaches get no delta), far below any direction a row reaches.
const RIDGE: f64 = 1e-9;

/// `G = S M⁻¹` (`[d, d]`, f32) for concept contexts/anchor contexts `concepts` (`[r_c, d]` each,
/// row for row) and the preserved contexts' mean Gram matrix `PᵀP / r_P` (`[d, d]`,
/// [`crate::preserve::Gram::mean`]); each weight's delta is `W G`.
pub fn anchor_solution_map(
    concepts: &[(Tensor, Tensor)],
    preserved: Option<&Tensor>,
    anchor_weight: f64,
    preserve_weight: f64,
) -> Result<Tensor> {
    let Some((first, _)) = concepts.first() else {
        candle_core::bail!("the anchor solve needs at least one concept's anchored contexts");
    };
    let d = first.dim(1)?;
    let device = first.device().clone();
    let gram = |a: &Tensor, b: &Tensor, w: f64| -> Result<Tensor> {
        let rows = a.dim(0)? as f64;
        a.to_dtype(DType::F64)?
            .t()?
            .matmul(&b.to_dtype(DType::F64)?)?
            .affine(w / rows, 0.0)
    };
    let mut m = Tensor::zeros((d, d), DType::F64, &device)?;
    let mut s = Tensor::zeros((d, d), DType::F64, &device)?;
    for (c, a) in concepts {
        m = (m + gram(c, c, anchor_weight)?)?;
        s = (s + gram(&(a - c)?, c, anchor_weight)?)?;
    }
    if let Some(p) = preserved {
        m = (m + p
            .to_dtype(DType::F64)?
            .to_device(&device)?
            .affine(preserve_weight, 0.0)?)?;
    }
    let m = to_faer(&m)?;
    let s = to_faer(&s)?;
    let scale = (0..d).map(|i| m[(i, i)]).sum::<f64>() / d as f64;
    let ridged = Mat::from_fn(d, d, |i, j| {
        m[(i, j)]
            + if i == j {
                RIDGE * scale.max(f64::MIN_POSITIVE)
            } else {
                0.0
            }
    });
    let llt = ridged.llt(Side::Lower).map_err(|e| {
        candle_core::Error::Msg(format!(
            "the anchor solve's Gram matrix is not positive definite: {e:?}"
        ))
    })?;
    // M is symmetric, so Gᵀ = M⁻¹ Sᵀ.
    let g_t = llt.solve(s.transpose());
    let values: Vec<f64> = (0..d)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .map(|(i, j)| g_t[(j, i)])
        .collect();
    Tensor::from_vec(values, (d, d), &Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_device(&device)
}

fn to_faer(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i][j]))
}
