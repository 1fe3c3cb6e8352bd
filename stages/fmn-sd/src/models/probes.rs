//! Recording cross-attention probabilities while they stay in the autograd graph.
use candle_core::Tensor;
use std::sync::Mutex;

/// Collects the attention probabilities `[batch, heads, query_pixels, key_tokens]` of the
/// cross-attention (`attn2`) modules it is handed to, keyed by the diffusers module path
/// (e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn2`), in forward order.
///
/// The tensors are not detached: a loss built on them backpropagates into the UNet.
#[derive(Default)]
pub struct AttentionRecorder {
    records: Mutex<Vec<(String, Tensor)>>,
}

impl AttentionRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&self, path: &str, probs: &Tensor) {
        self.records
            .lock()
            .expect("attention recorder poisoned")
            .push((path.to_string(), probs.clone()));
    }

    /// Takes the records gathered so far, leaving the recorder empty.
    pub fn take(&self) -> Vec<(String, Tensor)> {
        std::mem::take(&mut *self.records.lock().expect("attention recorder poisoned"))
    }

    pub fn len(&self) -> usize {
        self.records
            .lock()
            .expect("attention recorder poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
