//! `adversary_steps`: an attacker inside the denoising steps (AdvUnlearn, Zhang et al. 2024).
//! Per concept, learned token rows that attack steps move, on the UNet being trained, towards
//! drawing the concept's images (textual inversion's loss); the erasure then also moves the
//! prediction under the attacker's prompt onto the anchor's. Rounds of a finished inversion
//! (`harden`) chase one attack at a time; this one follows the UNet as it changes.
use crate::prompts::concept_prompt;
use crate::ResteerError;
use candle_core::{Device, Tensor, Var};
use fmn_inversion::train::denoising_loss;
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::ClipTextModel;
use fmn_sd::models::unet::UNet2DConditionModel;
use fmn_sd::train::scaffold::NoisyLatents;

/// Learned tokens per attacker: the attack measured in #26 (2 tokens brought bob back).
const TOKENS: usize = 2;

/// The attacker's start: noise of textual inversion's random initialiser (`<rand-0.017>`).
const INIT_STD: f64 = 0.017;

/// One concept's attacker.
pub struct Adversary {
    rows: Var,
    /// The largest norm a row may take: the text encoder's median token norm (an attacker
    /// with longer rows leaves the contexts the model was trained on, and erasing those
    /// costs the other concepts).
    max_norm: f64,
    /// Per concept prompt: the prompt with the attacker's tokens for the concept `[1, 77]`.
    ids: Vec<Tensor>,
}

impl Adversary {
    /// An attacker for the concept prompts of `templates` (one per prompt, in the prompts'
    /// order); `tokenizer` already holds the run's added tokens, whose rows the text encoder
    /// gets before the attacker's.
    pub fn new(
        tokenizer: &ClipTokenizer,
        text_encoder: &ClipTextModel,
        templates: &[&String],
        pooler: crate::prompts::PoolerPositions,
        concept: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ResteerError> {
        let mut tokenizer = tokenizer.clone();
        let names: Vec<String> = (1..=TOKENS)
            .map(|i| format!("<fmn-adversary-c{concept}-{i}>"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        tokenizer.add_tokens(&refs)?;
        let ids = templates
            .iter()
            .map(|t| {
                let p = concept_prompt(&tokenizer, t, &names.join(" "), pooler)?;
                Ok(Tensor::new(p.ids.as_slice(), device)?.unsqueeze(0)?)
            })
            .collect::<Result<Vec<_>, ResteerError>>()?;
        let mut rng = NoiseRng::new(seed);
        let dtype = text_encoder.token_embedding_table().dtype();
        let init = (rng.randn(&[TOKENS, text_encoder.hidden_size()], device)? * INIT_STD)?
            .to_dtype(dtype)?;
        Ok(Self {
            rows: Var::from_tensor(&init)?,
            max_norm: text_encoder.median_token_norm()?,
            ids,
        })
    }

    /// The attacker's token rows `[2, D]` as the variable its steps write (checkpointed by
    /// the run: `Objective::state`).
    pub fn var(&self) -> &Var {
        &self.rows
    }

    /// A copy of the attacker's token rows `[2, D]` now (the attack steps write the rows in
    /// place).
    pub fn rows(&self) -> Result<Tensor, ResteerError> {
        Ok(self.rows.as_tensor().copy()?.detach())
    }

    /// The hidden states of prompt `k` with the attacker's tokens, `[batch, 77, D]`; `added`:
    /// the rows of the run's other added tokens.
    fn context(
        &self,
        text_encoder: &ClipTextModel,
        added: Option<&Tensor>,
        k: usize,
        batch: usize,
    ) -> Result<Tensor, ResteerError> {
        let extra = match added {
            Some(a) => Tensor::cat(&[&a.to_dtype(self.rows.dtype())?, self.rows.as_tensor()], 0)?,
            None => self.rows.as_tensor().clone(),
        };
        let ids = self.ids[k].repeat((batch, 1))?;
        Ok(text_encoder.forward_with_token_embeddings(&ids, &extra)?)
    }

    /// `steps` attack steps on `noisy` (the concept's images) through `unet`: each moves the
    /// rows by `lr` per value along the normalised gradient of the denoising loss, then
    /// shortens rows longer than the median token norm to it. Returns
    /// the last loss and the context of prompt `k` after them, detached.
    #[allow(clippy::too_many_arguments)]
    pub fn attack(
        &self,
        text_encoder: &ClipTextModel,
        added: Option<&Tensor>,
        unet: &UNet2DConditionModel,
        noisy: &NoisyLatents,
        k: usize,
        steps: usize,
        lr: f64,
    ) -> Result<(f64, Tensor), ResteerError> {
        let batch = noisy.x_t.dim(0)?;
        let scale = lr * (self.rows.elem_count() as f64).sqrt();
        let mut last = f64::NAN;
        for _ in 0..steps {
            let context = self.context(text_encoder, added, k, batch)?;
            let pred = unet.forward(&noisy.x_t, &noisy.t, &context)?;
            let loss = denoising_loss(&pred, &noisy.target, None)?;
            last = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            let grads = loss.backward()?;
            let Some(g) = grads.get(self.rows.as_tensor()) else {
                return Err(ResteerError::Input(
                    "the attacker's tokens got no gradient".into(),
                ));
            };
            let norm = g
                .sqr()?
                .sum_all()?
                .sqrt()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if norm > 0.0 && norm.is_finite() {
                let moved = (self.rows.as_tensor() - (g * (scale / norm))?)?;
                self.rows
                    .set(&clip_norms(&moved.detach(), self.max_norm)?)?;
            }
        }
        let context = self.context(text_encoder, added, k, batch)?.detach();
        Ok((last, context))
    }
}

/// `rows [n, D]` with each row longer than `max` scaled to length `max`.
fn clip_norms(rows: &Tensor, max: f64) -> Result<Tensor, ResteerError> {
    if max <= 0.0 || !max.is_finite() {
        return Ok(rows.clone());
    }
    let norms = rows.sqr()?.sum_keepdim(1)?.sqrt()?;
    let scale = (norms.clamp(max, f64::MAX)?.recip()? * max)?;
    Ok(rows.broadcast_mul(&scale)?)
}
