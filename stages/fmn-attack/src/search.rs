//! The gradient-free prompt attack (after Ring-A-Bell, Tsai et al., ICLR 2024): a greedy search
//! over vocabulary words for a prompt whose cross-attention keys and values under the patched
//! model come closest to those of the concept's prompt under the base model. A candidate is
//! scored with the text encoder and the `attn2` projections alone: no sampling, no gradient.
use candle_core::{DType, Tensor, D};
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::embedding::{token_table_fingerprint, EmbeddingMeta, TokenEmbedding};
use fmn_sd::sample::pipeline::StableDiffusion;
use serde::{Deserialize, Serialize};

/// Candidate prompts encoded at once, at least (memory: `CHUNK × 77 × Σ 2·inner` floats).
const CHUNK: usize = 32;

/// The prompts one scoring pass encodes when each candidate fills `per_set` attack prompts:
/// whole candidates, at least [`CHUNK`] prompts.
pub fn prompts_per_pass(per_set: usize) -> usize {
    candidates_per_pass(per_set) * per_set
}

fn candidates_per_pass(per_set: usize) -> usize {
    CHUNK.div_ceil(per_set).max(1)
}

/// Each `attn2`'s `[to_k; to_v]` weights `[2·inner, D]` (f32), in the UNet's order.
fn kv_weights(model: &StableDiffusion) -> candle_core::Result<Vec<Tensor>> {
    model
        .unet
        .cross_attentions()
        .iter()
        .map(|a| {
            let (k, v) = a.key_value_weights();
            Tensor::cat(&[k, v], 0)?.to_dtype(DType::F32)
        })
        .collect()
}

/// The concept prompts' keys and values under the base model, each `attn2` layer over its own
/// norm so that every layer counts alike (the widest would otherwise decide alone).
pub struct BaseKv {
    /// `[P, 77, Σ 2·inner_l]`
    target: Tensor,
    norms: Vec<f64>,
}

impl BaseKv {
    /// `base`'s keys and values of `prompts` (the attack prompts with the concept's name).
    pub fn new(base: &StableDiffusion, prompts: &[&str]) -> fmn_sd::Result<Self> {
        let ctx = base.encode_prompts(prompts)?.to_dtype(DType::F32)?;
        let mut parts = Vec::new();
        let mut norms = Vec::new();
        for w in kv_weights(base)? {
            let kv = ctx.broadcast_matmul(&w.t()?)?;
            let norm = f64::from(kv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
                .max(f64::from(f32::MIN_POSITIVE));
            parts.push((kv / norm)?);
            norms.push(norm);
        }
        if parts.is_empty() {
            return Err(fmn_sd::SdError::Invalid(
                "the UNet has no cross-attention: a prompt attack has nothing to match".into(),
            ));
        }
        Ok(Self {
            target: Tensor::cat(&parts, D::Minus1)?,
            norms,
        })
    }
}

/// Scores prompts on the patched model: the mean over layers of
/// ‖KV_patched(prompt) − KV_base(concept prompt)‖² / ‖KV_base(concept prompt)‖².
pub struct KvDistance {
    /// `[D, Σ 2·inner_l]`: the patched `[to_k; to_v]ᵀ` of each layer over its target's norm.
    projection: Tensor,
    target: Tensor,
    layers: usize,
}

impl KvDistance {
    pub fn new(base: BaseKv, patched: &StableDiffusion) -> fmn_sd::Result<Self> {
        let weights = kv_weights(patched)?;
        if weights.len() != base.norms.len() {
            return Err(fmn_sd::SdError::Invalid(format!(
                "the patched model has {} cross-attention layers, the base model {}",
                weights.len(),
                base.norms.len()
            )));
        }
        let scaled = weights
            .iter()
            .zip(&base.norms)
            .map(|(w, n)| w / *n)
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            projection: Tensor::cat(&scaled, 0)?.t()?.contiguous()?,
            target: base.target,
            layers: base.norms.len(),
        })
    }

    /// The distance of each prompt set: `prompts[i]` holds one prompt per target prompt, in the
    /// order the target was built with.
    pub fn score(
        &self,
        model: &StableDiffusion,
        prompts: &[Vec<String>],
    ) -> fmn_sd::Result<Vec<f64>> {
        let per_set = self.target.dim(0)?;
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(candidates_per_pass(per_set)) {
            let flat: Vec<&str> = chunk.iter().flatten().map(String::as_str).collect();
            if flat.len() != chunk.len() * per_set {
                return Err(fmn_sd::SdError::Invalid(format!(
                    "a candidate needs {per_set} prompts, one per attack prompt"
                )));
            }
            let ctx = model.encode_prompts(&flat)?.to_dtype(DType::F32)?;
            let len = ctx.dim(1)?;
            let kv = ctx.broadcast_matmul(&self.projection)?;
            let kv = kv.reshape((chunk.len(), per_set, len, ()))?;
            let gap = kv.broadcast_sub(&self.target.unsqueeze(0)?)?;
            let d = gap.sqr()?.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?;
            out.extend(d.into_iter().map(|v| f64::from(v) / self.layers as f64));
        }
        Ok(out)
    }
}

/// One search: `tokens` words, `rounds` sweeps over the positions, `candidates` words tried
/// per position and sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    pub tokens: usize,
    pub rounds: usize,
    pub candidates: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    /// The words found, in prompt order.
    pub words: Vec<String>,
    /// The random words the search started from.
    pub start: Vec<String>,
    pub start_distance: f64,
    pub distance: f64,
    /// The distance after each sweep.
    pub trace: Vec<f64>,
    /// Candidate prompt sets scored, and the search's time (without sampling).
    pub scored: usize,
    pub seconds: f64,
}

/// Greedy coordinate search: from `tokens` random pool words, each sweep tries `candidates`
/// random pool words at each position and keeps the best if it is closer. `templates` hold one
/// `{}` each (the words).
pub fn search(
    model: &StableDiffusion,
    distance: &KvDistance,
    templates: &[String],
    pool: &[String],
    s: &SearchSettings,
    mut on_sweep: impl FnMut(usize),
) -> fmn_sd::Result<Found> {
    if pool.len() < 2 {
        return Err(fmn_sd::SdError::Invalid(
            "the vocabulary has fewer than 2 whole words to search".into(),
        ));
    }
    let started = std::time::Instant::now();
    let mut rng = NoiseRng::new(s.seed);
    let prompts = |words: &[String]| crate::config::fill_prompts(templates, &words.join(" "));
    let mut words: Vec<String> = (0..s.tokens)
        .map(|_| pool[rng.below(0, pool.len())].clone())
        .collect();
    let start = words.clone();
    let mut best = distance.score(model, &[prompts(&words)])?[0];
    let mut scored = 1;
    let start_distance = best;
    let mut trace = Vec::with_capacity(s.rounds);
    for sweep in 0..s.rounds {
        for pos in 0..s.tokens {
            let tried: Vec<String> = (0..s.candidates)
                .map(|_| pool[rng.below(0, pool.len())].clone())
                .filter(|w| *w != words[pos])
                .collect();
            let sets: Vec<Vec<String>> = tried
                .iter()
                .map(|w| {
                    let mut next = words.clone();
                    next[pos] = w.clone();
                    prompts(&next)
                })
                .collect();
            let scores = distance.score(model, &sets)?;
            scored += sets.len();
            if let Some((i, &d)) = scores.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)) {
                if d < best {
                    best = d;
                    words[pos] = tried[i].clone();
                }
            }
        }
        trace.push(best);
        on_sweep(sweep);
    }
    Ok(Found {
        words,
        start,
        start_distance,
        distance: best,
        trace,
        scored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The words' own token rows as an embedding of tokens `<{name}-1>`, ... (what `fmn-resteer
/// --adversarial` and `fmn-sample --embedding` read, like an inversion's).
pub fn words_embedding(
    model: &StableDiffusion,
    name: &str,
    words: &[String],
    settings: &SearchSettings,
) -> fmn_sd::Result<TokenEmbedding> {
    let mut ids = Vec::with_capacity(words.len());
    for w in words {
        match model.tokenizer.tokenize(w)?.as_slice() {
            [id] => ids.push(*id),
            other => {
                return Err(fmn_sd::SdError::Invalid(format!(
                    "the word {w:?} is {} tokens, not one",
                    other.len()
                )))
            }
        }
    }
    let table = model.text_encoder.token_embedding_table();
    let ids = Tensor::new(ids.as_slice(), table.device())?;
    let rows = table
        .index_select(&ids, 0)?
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    TokenEmbedding::new(
        (1..=words.len()).map(|i| format!("<{name}-{i}>")).collect(),
        rows,
        EmbeddingMeta {
            source: "fmn".into(),
            initializers: words.to_vec(),
            base_fingerprint: Some(token_table_fingerprint(&model.text_encoder)?),
            settings: serde_json::to_value(settings)
                .map_err(|e| fmn_sd::SdError::Invalid(e.to_string()))?,
            fmn_version: Some(fmn_core::VERSION.into()),
        },
    )
}
