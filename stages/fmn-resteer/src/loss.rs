//! The re-steering loss: the L2 norm of the cross-attention probabilities at the concept's
//! token positions over every `attn2` layer, head and pixel (Forget-Me-Not's
//! `torch.cat(attn_probs).norm()`), optionally weighted by the concept's mask; and the term that
//! keeps the key/value projections of preserved prompts where they were.
use candle_core::{Result, Tensor};
use fmn_sd::models::probes::AttentionRecord;

/// Σ over layers of Σ (w · p²) at `positions`, for the recorded maps (probabilities
/// `[B, heads, h·w, tokens]` on each record's grid). `mask`: `[B, 1, H, W]` weights in [0, 1],
/// brought onto each record's grid; `None` counts every pixel.
pub fn attention_energy(
    records: &[AttentionRecord],
    positions: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for record in records {
        let picked = record.probs.index_select(positions, 3)?.sqr()?; // [B, heads, N, P]
        let energy = match mask {
            None => picked.sum_all()?,
            Some(mask) => {
                let m = record
                    .mask_on_grid(mask)
                    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", record.path)))?;
                picked.broadcast_mul(&m)?.sum_all()?
            }
        };
        total = Some(match total {
            None => energy,
            Some(t) => (t + energy)?,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => candle_core::bail!("the UNet reported no cross-attention maps"),
    }
}

/// `Σ_layers ‖C Δᵀ‖² / rows(C)`: how far the key/value projections of the preserved contexts
/// `C: [rows, context_dim]` move under the deltas `Δ: [inner, context_dim]`, from the contexts'
/// mean Gram matrix `CᵀC / rows` (`[context_dim, context_dim]`, [`crate::preserve::Gram::mean`]).
pub fn preservation(gram_mean: &Tensor, deltas: &[Tensor]) -> Result<Tensor> {
    // ‖P Δᵀ‖² / rows = tr(Δ (PᵀP / rows) Δᵀ): the rows enter only through their Gram matrix.
    let mut total: Option<Tensor> = None;
    for d in deltas {
        let g = gram_mean.to_dtype(d.dtype())?;
        let term = (d.matmul(&g)? * d)?.sum_all()?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Tensor::zeros((), gram_mean.dtype(), gram_mean.device()),
    }
}

/// `Σ_layers ‖C Δᵀ + O‖² / rows(C)` with `O = (C − A) Wᵀ`: how far the key/value projections
/// `(W + Δ)` of the concept's contexts `C: [rows, context_dim]` lie from the original
/// projections `W` of its anchor contexts `A` (`offsets` holds `O` per layer, in `deltas`' order).
pub fn anchoring(contexts: &Tensor, deltas: &[Tensor], offsets: &[Tensor]) -> Result<Tensor> {
    if deltas.len() != offsets.len() {
        candle_core::bail!(
            "{} deltas but {} anchor offsets",
            deltas.len(),
            offsets.len()
        );
    }
    mean_squared_projection(contexts, deltas, Some(offsets))
}

/// `Σ_layers ‖C Δᵀ (+ O)‖² / rows(C)`.
fn mean_squared_projection(
    contexts: &Tensor,
    deltas: &[Tensor],
    offsets: Option<&[Tensor]>,
) -> Result<Tensor> {
    let rows = contexts.dim(0)? as f64;
    let mut total: Option<Tensor> = None;
    for (i, d) in deltas.iter().enumerate() {
        let mut projected = contexts.matmul(&d.t()?)?;
        if let Some(offsets) = offsets {
            projected = (projected + &offsets[i])?;
        }
        let term = projected.sqr()?.sum_all()?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    match total {
        Some(t) => t / rows,
        None => Tensor::zeros((), contexts.dtype(), contexts.device()),
    }
}

/// The anchor offsets `(C − A) Wᵀ` of [`anchoring`] for each base weight `W: [inner, context_dim]`;
/// `contexts` and `anchors` are `[rows, context_dim]`, row for row.
pub fn anchor_offsets(
    contexts: &Tensor,
    anchors: &Tensor,
    weights: &[&Tensor],
) -> Result<Vec<Tensor>> {
    let shift = (contexts - anchors)?;
    weights.iter().map(|w| shift.matmul(&w.t()?)).collect()
}
