//! The judge: says what a toy image shows (object, colour, striped or not, character), each
//! with a confidence, or that it shows no figure at all.
//!
//! It is a small CNN (see [`net`](self)) trained with candle on rendered images degraded by
//! [`crate::augment`] (blur, resampling, noise, blotches, colour jitter) so that it also copes
//! with the output of a tiny diffusion model, plus garbage images with no figure. The weights
//! ship in `data/toy-judge/judge.safetensors` and are compiled into the library
//! ([`Judge::load_default`]); `fmn-toy train-judge` retrains them from a seed.
mod im2col;
mod net;
pub mod train;

use crate::scene::{Character, Colour, Concept, Object, IMAGE_SIZE};
use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use train::{evaluate, train, Accuracy, TrainOptions, TrainReport};

/// The committed weights, compiled in.
pub static DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../../../data/toy-judge/judge.safetensors");

/// Where the committed weights live, relative to the repository root.
pub const DEFAULT_WEIGHTS_PATH: &str = "data/toy-judge/judge.safetensors";

/// Images judged per forward pass in [`Judge::judge_batch`].
const CHUNK: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not judge weights: {why}")]
    BadWeights { what: String, why: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A value that has a word in verdicts (JSON labels).
pub trait Label: Copy {
    fn label_word(&self) -> &'static str;
}

impl Label for Object {
    fn label_word(&self) -> &'static str {
        self.word()
    }
}

impl Label for Colour {
    fn label_word(&self) -> &'static str {
        self.word()
    }
}

/// Striped or not: "striped" / "plain".
impl Label for bool {
    fn label_word(&self) -> &'static str {
        if *self {
            "striped"
        } else {
            "plain"
        }
    }
}

/// A character or none: "bob" / "kiki" / "none".
impl Label for Option<Character> {
    fn label_word(&self) -> &'static str {
        match self {
            Some(c) => c.word(),
            None => "none",
        }
    }
}

/// The judge's answer about one attribute: its best guess, the guess's probability, and
/// whether it is sure (a figure was found and the probability reaches the judge's
/// `min_confidence`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guess<T> {
    pub best: T,
    pub confidence: f32,
    pub sure: bool,
}

impl<T: Copy> Guess<T> {
    /// The guess if sure, else `None` (unknown).
    pub fn label(&self) -> Option<T> {
        self.sure.then_some(self.best)
    }
}

/// JSON: `{"label": word or "unknown", "best": word, "confidence": p}`.
impl<T: Label> Serialize for Guess<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Guess", 3)?;
        st.serialize_field(
            "label",
            if self.sure {
                self.best.label_word()
            } else {
                "unknown"
            },
        )?;
        st.serialize_field("best", self.best.label_word())?;
        st.serialize_field("confidence", &self.confidence)?;
        st.end()
    }
}

/// Full class probabilities, in the order of `Object::ALL`, `Colour::ALL`, and
/// (none, bob, kiki) for characters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Probabilities {
    pub object: [f32; 4],
    pub colour: [f32; 4],
    /// Probability that the figure is striped.
    pub striped: f32,
    pub character: [f32; 3],
    /// Probability that the image shows a figure at all.
    pub figure: f32,
}

/// What an image shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether a figure was found (`probabilities.figure >= min_figure`). If not, the image
    /// is blank or garbage and no attribute is sure.
    pub figure: bool,
    pub object: Guess<Object>,
    pub colour: Guess<Colour>,
    pub striped: Guess<bool>,
    /// bob / kiki / none. A character is reported with its object and colour too.
    pub character: Guess<Option<Character>>,
    pub probabilities: Probabilities,
}

impl Verdict {
    /// No figure found: a blank or garbage image.
    pub fn is_unknown(&self) -> bool {
        !self.figure
    }

    /// Whether the judge is sure that the image shows `concept`.
    pub fn shows(&self, concept: Concept) -> bool {
        match concept {
            Concept::Object(o) => self.object.label() == Some(o),
            Concept::Colour(c) => self.colour.label() == Some(c),
            Concept::Stripes => self.striped.label() == Some(true),
            Concept::Character(c) => self.character.label() == Some(Some(c)),
        }
    }

    /// A short description: "bob (yellow circle)", "striped red square", "unknown", with
    /// "?" for attributes the judge is unsure of.
    pub fn description(&self) -> String {
        if !self.figure {
            return "unknown (no figure)".into();
        }
        let word = |sure: bool, w: &'static str| {
            if sure {
                Cow::Borrowed(w)
            } else {
                Cow::Owned(format!("{w}?"))
            }
        };
        let object = word(self.object.sure, self.object.best.word());
        let colour = word(self.colour.sure, self.colour.best.word());
        let style = if self.striped.best || !self.striped.sure {
            format!(
                "{} ",
                word(self.striped.sure, self.striped.best.label_word())
            )
        } else {
            String::new()
        };
        let figure = format!("{style}{colour} {object}");
        match (self.character.best, self.character.sure) {
            (Some(c), sure) => format!("{} ({figure})", word(sure, c.word())),
            (None, true) => figure,
            (None, false) => format!("{figure} (character?)"),
        }
    }
}

/// The toy-world judge. Cheap to share across threads (`&Judge` is enough to judge).
pub struct Judge {
    params: HashMap<String, Tensor>,
    device: Device,
    metadata: HashMap<String, String>,
    /// A figure is reported when its probability reaches this (default 0.5).
    pub min_figure: f32,
    /// An attribute is sure when its best class's probability reaches this (default 0.6).
    pub min_confidence: f32,
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judge")
            .field("metadata", &self.metadata)
            .field("min_figure", &self.min_figure)
            .field("min_confidence", &self.min_confidence)
            .finish_non_exhaustive()
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// Images as a channels-last `(batch, 64, 64, 3)` tensor scaled to -1..1 (other sizes are
/// resized).
pub(crate) fn images_to_tensor(
    images: &[&RgbImage],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = IMAGE_SIZE as usize;
    let mut data = vec![0f32; images.len() * 3 * n * n];
    for (b, img) in images.iter().enumerate() {
        let resized;
        let img = if img.dimensions() == (IMAGE_SIZE, IMAGE_SIZE) {
            *img
        } else {
            resized = imageops::resize(*img, IMAGE_SIZE, IMAGE_SIZE, FilterType::Triangle);
            &resized
        };
        let base = b * 3 * n * n;
        for (d, v) in data[base..base + 3 * n * n].iter_mut().zip(img.as_raw()) {
            *d = *v as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_vec(data, (images.len(), n, n, 3), device)
}

impl Judge {
    /// The committed judge ([`DEFAULT_WEIGHTS`], compiled into the library).
    pub fn load_default() -> Result<Judge, JudgeError> {
        Self::from_bytes(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_PATH)
    }

    /// A judge from a safetensors file written by `fmn-toy train-judge`.
    pub fn load(path: &Path) -> Result<Judge, JudgeError> {
        let bytes = std::fs::read(path).map_err(|source| JudgeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// A judge from safetensors bytes; `what` names them in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Judge, JudgeError> {
        let bad = |why: String| JudgeError::BadWeights {
            what: what.to_string(),
            why,
        };
        let device = Device::Cpu;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let params = candle_core::safetensors::load_buffer(bytes, &device)
            .map_err(|e| bad(e.to_string()))?;
        net::check_params(&params).map_err(bad)?;
        Ok(Self::from_params(params, metadata))
    }

    pub(crate) fn from_params(
        params: HashMap<String, Tensor>,
        metadata: HashMap<String, String>,
    ) -> Judge {
        Judge {
            params,
            device: Device::Cpu,
            metadata,
            min_figure: 0.5,
            min_confidence: 0.6,
        }
    }

    pub(crate) fn params(&self) -> &HashMap<String, Tensor> {
        &self.params
    }

    /// The training record stored with the weights (seed, steps, command, accuracy, ...).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Sets the figure and confidence thresholds.
    pub fn with_thresholds(mut self, min_figure: f32, min_confidence: f32) -> Self {
        self.min_figure = min_figure;
        self.min_confidence = min_confidence;
        self
    }

    /// Judges one image (any size; not 64×64 is resized).
    pub fn judge(&self, image: &RgbImage) -> Verdict {
        self.judge_batch(std::slice::from_ref(image)).remove(0)
    }

    /// Judges many images, batched.
    ///
    /// # Panics
    /// Only on an internal error of the network on the CPU, which its fixed shapes (checked
    /// at load) rule out; [`Self::try_judge_batch`] returns such errors instead.
    pub fn judge_batch(&self, images: &[RgbImage]) -> Vec<Verdict> {
        self.try_judge_batch(images)
            .expect("judge network failed on the CPU")
    }

    /// [`Self::judge_batch`], returning errors of the network.
    pub fn try_judge_batch(&self, images: &[RgbImage]) -> Result<Vec<Verdict>, JudgeError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            let x = images_to_tensor(&refs, &self.device)?;
            let logits = net::forward(&self.params, &x)?.to_vec2::<f32>()?;
            out.extend(logits.iter().map(|l| self.verdict(l)));
        }
        Ok(out)
    }

    fn verdict(&self, logits: &[f32]) -> Verdict {
        let object = softmax(&logits[net::OBJECT]);
        let colour = softmax(&logits[net::COLOUR]);
        let striped = softmax(&logits[net::STRIPED]);
        let character = softmax(&logits[net::CHARACTER]);
        let figure_p = softmax(&logits[net::FIGURE])[1];
        let figure = figure_p >= self.min_figure;
        let guess = |p: &[f32]| {
            let i = argmax(p);
            (i, p[i], figure && p[i] >= self.min_confidence)
        };
        let (o, oc, os) = guess(&object);
        let (c, cc, cs) = guess(&colour);
        let (s, sc, ss) = guess(&striped);
        let (k, kc, ks) = guess(&character);
        Verdict {
            figure,
            object: Guess {
                best: Object::ALL[o],
                confidence: oc,
                sure: os,
            },
            colour: Guess {
                best: Colour::ALL[c],
                confidence: cc,
                sure: cs,
            },
            striped: Guess {
                best: s == 1,
                confidence: sc,
                sure: ss,
            },
            character: Guess {
                best: if k == 0 {
                    None
                } else {
                    Some(Character::ALL[k - 1])
                },
                confidence: kc,
                sure: ks,
            },
            probabilities: Probabilities {
                object: object.try_into().expect("4 objects"),
                colour: colour.try_into().expect("4 colours"),
                striped: striped[1],
                character: character.try_into().expect("3 character classes"),
                figure: figure_p,
            },
        }
    }
}
