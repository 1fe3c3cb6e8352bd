//! The exact minimiser of the anchor and preservation terms over the key/value deltas: both
//! terms are quadratic in each delta `Δ: [inner, d]`, so
//!
//! `Σ_c a_c/r_c ‖C_c Δᵀ + (C_c − A_c) Wᵀ‖² + p/r_P ‖P Δᵀ‖²`
//!
//! is smallest at `Δ = W S M⁻¹` with `M = Σ_c a_c/r_c C_cᵀC_c + p/r_P PᵀP` and
//! `S = Σ_c a_c/r_c (A_c − C_c)ᵀ C_c` (both `[d, d]`, shared by every K/V weight). Starting the
//! re-steering steps there replaces the many optimiser steps these two terms would take (and do
//! not finish in 50: BENCHMARKS.md#re-steering-preset-how-it-was-chosen).
//!
//! With several concepts, [`AnchorSolve::balanced`] chooses the weights `a_c`: each concept's
//! contexts end as close to its targets as they would in a solve of that concept alone.
use candle_core::{DType, Device, Result, Tensor};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// Relative ridge added to `M`'s diagonal: keeps the solve defined when the rows do not span the
/// context space (directions no row reaches get no delta), far below any direction a row reaches.
const RIDGE: f64 = 1e-9;

/// A concept's rows, scaled by `1/√r` so that sums over them are means: the contexts `C` and
/// their distances to the targets `D = C − A`, and `‖D‖²`.
struct ConceptRows {
    c: Mat<f64>,
    d: Mat<f64>,
    dd: f64,
}

/// The anchor solve's statistics, ready to solve under any weights.
pub struct AnchorSolve {
    d: usize,
    device: Device,
    concepts: Vec<ConceptRows>,
    preserved: Option<Mat<f64>>,
}

/// The result of [`AnchorSolve::balanced`].
#[derive(Debug, Clone)]
pub struct BalancedSolution {
    /// `G = S M⁻¹` (`[d, d]`, f32); each weight's delta is `W G`.
    pub map: Tensor,
    /// Per concept: the anchor weight `a_c` the solve used.
    pub weights: Vec<f64>,
    /// Per concept: its remaining distance to its targets, `‖C(I + G)ᵀ − A‖² / ‖C − A‖²`, in
    /// the joint solve and in a solve of it alone.
    pub residuals: Vec<(f64, f64)>,
}

/// How much further than alone a concept may end from its targets in a joint solve before its
/// weight is raised (5 %).
const BALANCE_TOLERANCE: f64 = 1.05;
/// Weight-raising rounds at most (each one `[d, d]` solve).
const BALANCE_ROUNDS: usize = 32;

impl AnchorSolve {
    /// Statistics of concept contexts / anchor targets `concepts` (`[r_c, d]` each, row for row)
    /// and the preserved contexts' mean Gram matrix `PᵀP / r_P` (`[d, d]`,
    /// [`crate::preserve::Gram::mean`]).
    pub fn new(concepts: &[(Tensor, Tensor)], preserved: Option<&Tensor>) -> Result<Self> {
        let Some((first, _)) = concepts.first() else {
            candle_core::bail!("the anchor solve needs at least one concept's anchored contexts");
        };
        let d = first.dim(1)?;
        let device = first.device().clone();
        let concepts = concepts
            .iter()
            .map(|(c, a)| {
                let scale = 1.0 / (c.dim(0)? as f64).sqrt();
                let c = c.to_dtype(DType::F64)?;
                let diff = (&c - a.to_dtype(DType::F64)?)?;
                let dd = diff.sqr()?.sum_all()?.to_scalar::<f64>()? * scale * scale;
                Ok(ConceptRows {
                    c: to_faer(&c.affine(scale, 0.0)?)?,
                    d: to_faer(&diff.affine(scale, 0.0)?)?,
                    dd,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let preserved = preserved.map(to_faer).transpose()?;
        Ok(Self {
            d,
            device,
            concepts,
            preserved,
        })
    }

    /// `G = S M⁻¹` (f64) under per-concept anchor weights `weights`.
    fn solve(&self, weights: &[f64], preserve_weight: f64) -> Result<Mat<f64>> {
        let d = self.d;
        let mut m = Mat::<f64>::zeros(d, d);
        let mut s = Mat::<f64>::zeros(d, d);
        for (c, &w) in self.concepts.iter().zip(weights) {
            if w != 0.0 {
                m += faer::Scale(w) * c.c.transpose() * &c.c;
                s -= faer::Scale(w) * c.d.transpose() * &c.c;
            }
        }
        if let Some(p) = &self.preserved {
            m += faer::Scale(preserve_weight) * p;
        }
        let scale = (0..d).map(|i| m[(i, i)]).sum::<f64>() / d as f64;
        for i in 0..d {
            m[(i, i)] += RIDGE * scale.max(f64::MIN_POSITIVE);
        }
        let llt = m.llt(Side::Lower).map_err(|e| {
            candle_core::Error::Msg(format!(
                "the anchor solve's Gram matrix is not positive definite: {e:?}"
            ))
        })?;
        // M is symmetric, so Gᵀ = M⁻¹ Sᵀ.
        Ok(llt.solve(s.transpose()).transpose().to_owned())
    }

    /// Concept `i`'s remaining distance to its targets under `g`, relative to the start:
    /// `‖D + C Gᵀ‖² / ‖D‖²` with `D = C − A`.
    fn residual(&self, i: usize, g: &Mat<f64>) -> f64 {
        let c = &self.concepts[i];
        if c.dd <= 0.0 {
            return 0.0;
        }
        let left = &c.d + &c.c * g.transpose();
        left.squared_norm_l2() / c.dd
    }

    /// Concept `i`'s remaining distance to its targets in a solve of it alone (weight
    /// `anchor_weight`), as a share of its start distance: how far the preserved prompts let
    /// the edit reach its targets.
    pub fn alone(&self, i: usize, anchor_weight: f64, preserve_weight: f64) -> Result<f64> {
        let mut w = vec![0.0; self.concepts.len()];
        w[i] = anchor_weight;
        Ok(self.residual(i, &self.solve(&w, preserve_weight)?))
    }

    /// The solve with every concept at weight `anchor_weight`.
    pub fn equal(&self, anchor_weight: f64, preserve_weight: f64) -> Result<Tensor> {
        let weights = vec![anchor_weight; self.concepts.len()];
        self.to_tensor(&self.solve(&weights, preserve_weight)?)
    }

    /// The joint solve whose concepts each end within 5 % of where a solve of that concept
    /// alone (weight `anchor_weight`) puts it. Weights start at `anchor_weight / n` — the
    /// preservation list then holds `n` concepts as firmly as one — and the weight of each
    /// concept left further from its targets is raised by that ratio, at most to
    /// `anchor_weight`: concepts the others' edits already move keep a small weight, so the
    /// preserved prompts pay only for the concepts that need it (BENCHMARKS.md#re-steering-defaults).
    pub fn balanced(&self, anchor_weight: f64, preserve_weight: f64) -> Result<BalancedSolution> {
        let n = self.concepts.len();
        let alone = (0..n)
            .map(|i| self.alone(i, anchor_weight, preserve_weight))
            .collect::<Result<Vec<_>>>()?;
        let mut weights = vec![anchor_weight / n as f64; n];
        let mut g = self.solve(&weights, preserve_weight)?;
        for _ in 0..BALANCE_ROUNDS {
            let mut raised = false;
            for i in 0..n {
                let ratio = self.residual(i, &g) / alone[i].max(1e-12);
                if ratio > BALANCE_TOLERANCE && weights[i] < anchor_weight {
                    weights[i] = (weights[i] * ratio).min(anchor_weight);
                    raised = true;
                }
            }
            if !raised {
                break;
            }
            g = self.solve(&weights, preserve_weight)?;
        }
        let residuals = (0..n).map(|i| (self.residual(i, &g), alone[i])).collect();
        Ok(BalancedSolution {
            map: self.to_tensor(&g)?,
            weights,
            residuals,
        })
    }

    fn to_tensor(&self, g: &Mat<f64>) -> Result<Tensor> {
        let d = self.d;
        let values: Vec<f64> = (0..d)
            .flat_map(|i| (0..d).map(move |j| g[(i, j)]))
            .collect();
        Tensor::from_vec(values, (d, d), &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_device(&self.device)
    }
}

/// `G = S M⁻¹` (`[d, d]`, f32) with every concept at weight `anchor_weight`, for concept
/// contexts/anchor contexts `concepts` (`[r_c, d]` each, row for row) and the preserved
/// contexts' mean Gram matrix `PᵀP / r_P` (`[d, d]`, [`crate::preserve::Gram::mean`]); each
/// weight's delta is `W G`.
pub fn anchor_solution_map(
    concepts: &[(Tensor, Tensor)],
    preserved: Option<&Tensor>,
    anchor_weight: f64,
    preserve_weight: f64,
) -> Result<Tensor> {
    AnchorSolve::new(concepts, preserved)?.equal(anchor_weight, preserve_weight)
}

fn to_faer(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i][j]))
}
