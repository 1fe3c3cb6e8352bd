//! Optional training term that teaches each caption's subject word (the object word, or the
//! character's name) to attend to its figure: `1 − share`, where `share` is the part of the
//! word's cross-attention mass (over pixels, heads averaged) that falls inside the exact
//! figure mask, averaged over every `attn2` layer and the captions not dropped for
//! classifier-free guidance.
//!
//! Without it, the toy UNet reads the prompt mostly through the end-of-text padding tokens
//! (each holds the whole caption in a causal text encoder): the object word's attention
//! spread over the image (1.2× the figure's share, BENCHMARKS.md#attention-term-why-the-toy-model-has-one), so re-steering attention
//! away from a word had little to act on.
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::probes::AttentionRecord;

use fmn_toy_world::scene::{Character, Object};

/// The token position of each caption's subject, given the captions' token ids: the first
/// token of the first object word or character name it contains (None: it names neither).
pub fn subject_positions<'a>(
    captions: impl IntoIterator<Item = &'a [u32]>,
    tokenizer: &ClipTokenizer,
) -> Result<Vec<Option<usize>>> {
    let words: Vec<u32> = Object::ALL
        .iter()
        .map(|o| o.word())
        .chain(Character::ALL.iter().map(|c| c.word()))
        .map(|w| {
            tokenizer
                .tokenize(w)?
                .first()
                .copied()
                .with_context(|| format!("`{w}` has no tokens"))
        })
        .collect::<Result<_>>()?;
    Ok(captions
        .into_iter()
        .map(|ids| ids.iter().position(|t| words.contains(t)))
        .collect())
}

/// One-hot `[B, tokens]` selectors of `positions` (a row of zeros for None).
pub fn selectors(positions: &[Option<usize>], tokens: usize, device: &Device) -> Result<Tensor> {
    let mut sel = vec![0f32; positions.len() * tokens];
    for (row, p) in positions.iter().enumerate() {
        if let Some(p) = p {
            sel[row * tokens + p] = 1.0;
        }
    }
    Ok(Tensor::from_vec(sel, (positions.len(), tokens), device)?)
}

/// The term for the recorded `probs` (`[B, heads, pixels, tokens]` per layer), the selected
/// token per sample (`selectors`: `[B, tokens]`), the figure masks `[B, 1, H, W]` and `keep`
/// (`[B]`, 1 for captions that were not dropped).
pub fn attention_term(
    records: &[AttentionRecord],
    selectors: &Tensor,
    masks: &Tensor,
    keep: &Tensor,
) -> Result<Tensor> {
    let (b, tokens) = selectors.dims2()?;
    let sel = selectors.reshape((b, 1, 1, tokens))?;
    let kept = keep.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let mut total: Option<Tensor> = None;
    for record in records {
        let pixels = record.height * record.width;
        let word = record.probs.broadcast_mul(&sel)?.sum(3)?.mean(1)?; // [B, pixels]
        let m = record
            .mask_on_grid(masks)
            .with_context(|| format!("{}: the masks on its grid", record.path))?
            .reshape((b, pixels))?
            .to_dtype(word.dtype())?;
        // A dropped caption selects no token: its total is 0, and the epsilon keeps 0 / 0
        // from turning the whole term into NaN before `keep` zeroes it.
        let share = ((&word * &m)?.sum(1)? / (word.sum(1)? + 1e-12)?)?; // [B]
        let miss = ((share.ones_like()? - share)? * keep)?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + miss)?,
            None => miss,
        });
    }
    let total = total.context("no cross-attention layers were recorded")?;
    Ok((total / (kept * records.len() as f64))?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_is_one_minus_the_share_inside_the_mask_over_kept_samples() {
        let dev = Device::Cpu;
        // Two samples, one head, 2×2 pixels, 3 tokens. Sample 0 selects token 1, whose
        // attention over the pixels is [0.2, 0.4, 0.1, 0.3] (unnormalised on purpose: the
        // share divides by the total); its mask covers pixels 0 and 1 → share 0.6.
        // Sample 1 is dropped (keep 0), whatever it attends.
        let probs = Tensor::new(
            &[
                [[
                    [0.5f32, 0.2, 0.3],
                    [0.1, 0.4, 0.5],
                    [0.6, 0.1, 0.3],
                    [0.2, 0.3, 0.5],
                ]],
                [[
                    [0.9f32, 0.05, 0.05],
                    [0.9, 0.05, 0.05],
                    [0.9, 0.05, 0.05],
                    [0.9, 0.05, 0.05],
                ]],
            ],
            &dev,
        )
        .unwrap();
        let sel = selectors(&[Some(1), Some(2)], 3, &dev).unwrap();
        let dropped = selectors(&[Some(1), None], 3, &dev).unwrap();
        let masks =
            Tensor::new(&[[[[1f32, 1.], [0., 0.]]], [[[0f32, 0.], [0., 1.]]]], &dev).unwrap();
        let keep = Tensor::new(&[1f32, 0.], &dev).unwrap();
        let record = |path: &str, probs: Tensor| AttentionRecord {
            path: path.into(),
            height: 2,
            width: 2,
            probs,
        };
        let layers = vec![record("a", probs.clone()), record("b", probs)];
        let t: f32 = attention_term(&layers, &sel, &masks, &keep)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((t - 0.4).abs() < 1e-6, "{t}");
        // A dropped caption (no selected token) contributes nothing, and no NaN.
        let t: f32 = attention_term(&layers, &dropped, &masks, &keep)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((t - 0.4).abs() < 1e-6, "{t}");
        // Both kept: sample 1's token 2 has share 0.25 → mean miss (0.4 + 0.75) / 2.
        let keep = Tensor::new(&[1f32, 1.], &dev).unwrap();
        let t: f32 = attention_term(&layers, &sel, &masks, &keep)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((t - 0.575).abs() < 1e-6, "{t}");
    }
}

#[cfg(test)]
mod position_tests {
    use super::*;

    #[test]
    fn subjects_are_found_after_the_start_token() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/clip-tokenizer");
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        let ids: Vec<Vec<u32>> = [
            "a photo of a red circle",
            "bob in the style of stripes",
            "a photo of",
            "",
        ]
        .iter()
        .map(|c| tok.encode(c).unwrap())
        .collect();
        let found = subject_positions(ids.iter().map(|r| r.as_slice()), &tok).unwrap();
        // <start> a photo of a red circle: "circle" is token 6; <start> bob: 1.
        assert_eq!(found, vec![Some(6), Some(1), None, None]);
    }
}
