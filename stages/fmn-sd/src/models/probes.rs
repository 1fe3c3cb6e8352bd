//! Recording cross-attention probabilities while they stay in the autograd graph, each with
//! the grid its queries lie on, and what every reader of them shares: a mask brought onto a
//! record's grid, and the attention mass of chosen tokens.
use crate::{Result, SdError};
use candle_core::Tensor;
use std::sync::Mutex;

/// One cross-attention map: probabilities `[batch, heads, height·width, tokens]` of the
/// module at `path` (e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`), whose
/// queries are the pixels of a `height`×`width` grid in row-major order.
#[derive(Debug, Clone)]
pub struct AttentionRecord {
    pub path: String,
    pub height: usize,
    pub width: usize,
    pub probs: Tensor,
}

impl AttentionRecord {
    /// `mask [B, 1, H, W]` (weights in [0, 1], at any size) on this record's grid, shaped
    /// `[B, 1, height·width, 1]` to broadcast over heads and tokens.
    pub fn mask_on_grid(&self, mask: &Tensor) -> Result<Tensor> {
        let b = mask.dim(0)?;
        Ok(resize_mask(mask, self.height, self.width)?
            .reshape((b, 1, self.height * self.width, 1))?
            .to_dtype(self.probs.dtype())?)
    }

    /// The record with `probs` replaced (same module and grid), e.g. one row of a batch.
    pub fn with_probs(&self, probs: Tensor) -> Self {
        Self {
            path: self.path.clone(),
            height: self.height,
            width: self.width,
            probs,
        }
    }
}

/// The attention mass on token `positions`, summed over them: `[B, heads, pixels]`.
pub fn token_mass(probs: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let tokens = probs.dim(3)?;
    if let Some(&p) = positions.iter().find(|&&p| p >= tokens) {
        return Err(SdError::Invalid(format!(
            "token position {p} beyond the {tokens} tokens of the attention map"
        )));
    }
    let idx = Tensor::new(
        positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        probs.device(),
    )?;
    Ok(probs.index_select(&idx, 3)?.sum(3)?)
}

/// A `[B, 1, H, W]` mask at `h`×`w`: the mean over each block when the size divides evenly
/// (the share of the block inside the figure), nearest neighbour otherwise.
pub fn resize_mask(mask: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, mh, mw) = mask.dims4()?;
    if (mh, mw) == (h, w) {
        return Ok(mask.clone());
    }
    if mh % h == 0 && mw % w == 0 {
        Ok(mask.avg_pool2d((mh / h, mw / w))?)
    } else {
        Ok(mask.upsample_nearest2d(h, w)?)
    }
}

/// Where a module's attention probabilities go, and the grid of its queries.
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub recorder: &'a AttentionRecorder,
    pub height: usize,
    pub width: usize,
}

/// Collects the records of the cross-attention (`attn2`) modules it is handed to, in forward
/// order. The tensors are not detached: a loss built on them backpropagates into the UNet.
#[derive(Default)]
pub struct AttentionRecorder {
    records: Mutex<Vec<AttentionRecord>>,
}

impl AttentionRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A probe recording into this recorder for queries on a `height`×`width` grid.
    pub fn at(&self, height: usize, width: usize) -> Probe<'_> {
        Probe {
            recorder: self,
            height,
            width,
        }
    }

    pub fn record(&self, record: AttentionRecord) {
        self.lock().push(record);
    }

    /// Takes the records gathered so far, leaving the recorder empty.
    pub fn take(&self) -> Vec<AttentionRecord> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AttentionRecord>> {
        // A panic while pushing cannot leave the list half-changed: use it as it is.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}
