//! diffusers' `Transformer2DModel` (continuous input) and `BasicTransformerBlock`.
use crate::models::attention::Attention;
use crate::models::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::models::probes::{AttentionRecorder, Probe};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `ff`: GEGLU projection to 4×dim then back.
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: Linear::load(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::load(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// `[B, N, dim] -> [B, N, dim]`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = fmn_ops::geglu::geglu(&self.proj_in.forward(xs)?)?;
        self.proj_out.forward(&gated)
    }
}

#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_dim: usize,
        context_dim: usize,
    ) -> Result<Self> {
        // LayerNorm eps 1e-5: diffusers' BasicTransformerBlock default `norm_eps`.
        Ok(Self {
            norm1: LayerNorm::load(vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: LayerNorm::load(vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: LayerNorm::load(vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `xs: [B, N, dim]`, `context: [B, 77, context_dim]` -> `[B, N, dim]`; the
    /// cross-attention's probabilities go to `probe` if given.
    pub fn forward(&self, xs: &Tensor, context: &Tensor, probe: Option<Probe>) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context), probe)?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }

    pub fn cross_attention(&self) -> &Attention {
        &self.attn2
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, channels: usize, s: &TransformerSettings) -> Result<Self> {
        let inner = s.heads * s.head_dim;
        let (proj_in, proj_out) = if s.use_linear_projection {
            (
                Projection::Linear(Linear::load(vb.pp("proj_in"), channels, inner, true)?),
                Projection::Linear(Linear::load(vb.pp("proj_out"), inner, channels, true)?),
            )
        } else {
            (
                Projection::Conv(Conv2d::load(vb.pp("proj_in"), channels, inner, 1, 1, 0)?),
                Projection::Conv(Conv2d::load(vb.pp("proj_out"), inner, channels, 1, 1, 0)?),
            )
        };
        let blocks = (0..s.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    inner,
                    s.heads,
                    s.head_dim,
                    s.context_dim,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            // eps 1e-6: Transformer2DModel's GroupNorm.
            norm: GroupNorm::load(vb.pp("norm"), s.groups, channels, 1e-6)?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    /// `xs: [B, C, H, W]`, `context: [B, 77, context_dim]` -> `[B, C, H, W]`
    pub fn forward(
        &self,
        xs: &Tensor,
        context: &Tensor,
        recorder: Option<&AttentionRecorder>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch))
        };
        let mut hs = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            hs = block.forward(&hs, context, recorder.map(|r| r.at(h, w)))?;
        }
        let to_map = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dim(2)?;
            t.reshape((b, h, w, ch))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&hs)?)?,
            Projection::Linear(lin) => {
                let projected = lin.forward(&hs)?;
                debug_assert_eq!(projected.dim(2)?, c);
                to_map(&projected)?
            }
        };
        out + xs
    }

    pub fn blocks(&self) -> &[BasicTransformerBlock] {
        &self.blocks
    }
}
