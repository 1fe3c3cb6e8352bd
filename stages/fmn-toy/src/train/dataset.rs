//! Training images as one tensor, captions as token ids.
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use fmn_sd::tokenizer::ClipTokenizer;
use image::RgbImage;

pub struct Dataset {
    /// `[N, 3, 64, 64]` in `[-1, 1]`.
    pub images: Tensor,
    /// `[N, 77]` u32 token ids of the captions.
    pub ids: Tensor,
    /// Token ids of the empty caption (classifier-free-guidance dropout).
    pub empty_ids: Vec<u32>,
}

impl Dataset {
    pub fn new(
        examples: &[(RgbImage, String)],
        tokenizer: &ClipTokenizer,
        device: &Device,
    ) -> Result<Self> {
        ensure!(!examples.is_empty(), "no training examples");
        let (w, h) = examples[0].0.dimensions();
        let mut pixels = Vec::with_capacity(examples.len() * 3 * (w * h) as usize);
        let mut ids = Vec::with_capacity(examples.len() * tokenizer.max_len());
        for (img, caption) in examples {
            ensure!(img.dimensions() == (w, h), "training images differ in size");
            for c in 0..3 {
                pixels.extend(img.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
            }
            ids.extend(tokenizer.encode(caption)?);
        }
        let n = examples.len();
        Ok(Self {
            images: Tensor::from_vec(pixels, (n, 3, h as usize, w as usize), device)?,
            ids: Tensor::from_vec(ids, (n, tokenizer.max_len()), device)?,
            empty_ids: tokenizer.encode("")?,
        })
    }

    pub fn len(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
