//! Training images and figure masks as tensors, captions as token ids.
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use fmn_sd::io::tokenizer::ClipTokenizer;
use image::{GrayImage, RgbImage};

/// One rendered training image with its exact figure mask and caption.
pub struct Example {
    pub image: RgbImage,
    pub mask: GrayImage,
    pub caption: String,
}

/// Appends `image` channel by channel (`[3, H, W]` order) with values scaled to `[-1, 1]`, the
/// VAE's input range.
pub fn extend_planar_pixels(out: &mut Vec<f32>, image: &RgbImage) {
    for c in 0..3 {
        out.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
    }
}

pub struct Dataset {
    /// `[N, 3, 64, 64]` in `[-1, 1]`.
    pub images: Tensor,
    /// `[N, 1, 64, 64]`: 1 on the figure, 0 on the background.
    pub masks: Tensor,
    /// `[N, 77]` u32 token ids of the captions.
    pub ids: Tensor,
    /// Token ids of the empty caption (classifier-free-guidance dropout).
    pub empty_ids: Vec<u32>,
    /// Token position of each caption's object word or character name.
    pub subject_positions: Vec<Option<usize>>,
}

impl Dataset {
    pub fn new(examples: &[Example], tokenizer: &ClipTokenizer, device: &Device) -> Result<Self> {
        ensure!(!examples.is_empty(), "no training examples");
        let (w, h) = examples[0].image.dimensions();
        let mut pixels = Vec::with_capacity(examples.len() * 3 * (w * h) as usize);
        let mut masks = Vec::with_capacity(examples.len() * (w * h) as usize);
        let mut ids = Vec::with_capacity(examples.len() * tokenizer.max_len());
        for ex in examples {
            ensure!(
                ex.image.dimensions() == (w, h) && ex.mask.dimensions() == (w, h),
                "training images or masks differ in size"
            );
            extend_planar_pixels(&mut pixels, &ex.image);
            masks.extend(ex.mask.pixels().map(|p| p.0[0] as f32 / 255.0));
            ids.extend(tokenizer.encode(&ex.caption)?);
        }
        let n = examples.len();
        let subject_positions =
            super::attention_term::subject_positions(ids.chunks(tokenizer.max_len()), tokenizer)?;
        Ok(Self {
            images: Tensor::from_vec(pixels, (n, 3, h as usize, w as usize), device)?,
            masks: Tensor::from_vec(masks, (n, 1, h as usize, w as usize), device)?,
            ids: Tensor::from_vec(ids, (n, tokenizer.max_len()), device)?,
            empty_ids: tokenizer.encode("")?,
            subject_positions,
        })
    }

    pub fn len(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
