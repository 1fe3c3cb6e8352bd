//! diffusers' `Attention` module (self- and cross-attention) with an optional probe on the
//! attention probabilities.
use crate::models::nn::Linear;
use crate::models::probes::{AttentionRecord, Probe};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use fmn_ops::fused_attention;
use fmn_ops::softmax::softmax_last_dim;

#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    /// The diffusers module path, the key under which probabilities are recorded.
    path: String,
}

impl Attention {
    /// `context_dim` is `None` for self-attention (keys and values come from the query input).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::load(vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            head_dim,
            path: vb.prefix(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The key and value projections' weights `[inner, context_dim]` each.
    pub fn key_value_weights(&self) -> (&Tensor, &Tensor) {
        (self.to_k.weight(), self.to_v.weight())
    }

    /// `[B, N, C] -> [B, H, N, D]`
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        xs.reshape((b, n, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `x: [B, N, query_dim]`, `context: [B, M, context_dim]` (None: self-attention)
    /// `-> [B, N, query_dim]`; the probabilities `[B, heads, N, M]` go to `probe` if given.
    pub fn forward(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        probe: Option<Probe>,
    ) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let context = context.unwrap_or(xs);
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = if probe.is_none() && fused_attention::supported(&q) {
            let (_, h, m, d) = k.dims4()?;
            let flat = |t: &Tensor, len: usize| t.reshape((b * h, len, d));
            fused_attention::attention(&flat(&q, n)?, &flat(&k, m)?, &flat(&v, m)?, scale)?
                .reshape((b, h, n, d))?
        } else if let Some(probe) = probe {
            // Recorded probabilities feed losses and metrics: with f16 / bf16 weights their
            // scores and softmax are computed in f32.
            let wide = |t: &Tensor| match t.dtype() {
                DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
                _ => Ok(t.clone()),
            };
            let scores = (wide(&q)?.matmul(&wide(&k)?.t()?)? * scale)?;
            let probs = softmax_last_dim(&scores)?;
            if probe.height * probe.width != n {
                candle_core::bail!(
                    "{}: {n} queries do not lie on the {}x{} grid of the probe",
                    self.path,
                    probe.height,
                    probe.width
                );
            }
            probe.recorder.record(AttentionRecord {
                path: self.path.clone(),
                height: probe.height,
                width: probe.width,
                probs: probs.clone(),
            });
            probs.to_dtype(v.dtype())?.matmul(&v)? // [B, H, N, D]
        } else {
            let scores = (q.matmul(&k.t()?)? * scale)?;
            softmax_last_dim(&scores)?.matmul(&v)?
        };
        let out = out
            .transpose(1, 2)?
            .reshape((b, n, self.heads * self.head_dim))?;
        self.to_out.forward(&out)
    }
}
