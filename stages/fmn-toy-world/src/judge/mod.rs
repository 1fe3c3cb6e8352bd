//! The judge: says what a toy image shows (object, colour, striped or not, character), each
//! with a confidence, or that it shows no figure at all.
//!
//! It is a small CNN (see [`net`](self)) trained with candle on rendered images degraded by
//! [`crate::augment`] (blur, resampling, noise, blotches, colour jitter) so that it also copes
//! with the output of a tiny diffusion model, plus garbage images with no figure. The weights
//! ship in `data/toy-judge/judge.safetensors` and are compiled into the library
//! ([`Judge::load_default`]); `fmn-toy train-judge` ([`train()`]) retrains them from a seed.
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
    #[error("the judge's report cannot be recorded: {0}")]
    Record(String),
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

fn softmax<const N: usize>(logits: [f32; N]) -> [f32; N] {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e = logits.map(|l| (l - m).exp());
    let s: f32 = e.iter().sum();
    e.map(|v| v / s)
}

/// The probabilities of one head, from a row of logits.
fn head<const N: usize>(
    logits: &[f32],
    range: std::ops::Range<usize>,
) -> Result<[f32; N], JudgeError> {
    let bad = || {
        candle_core::Error::Msg(format!(
            "judge: {} logits, expected {}",
            logits.len(),
            net::OUTPUTS
        ))
    };
    let row: [f32; N] = logits
        .get(range)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok(softmax(row))
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

/// Images as a `(batch, 3, 64, 64)` tensor scaled to -1..1 (other sizes are resized).
pub(crate) fn images_to_tensor(
    images: &[&RgbImage],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = IMAGE_SIZE as usize;
    let plane = n * n;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (img, planes) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let resized;
        let img = if img.dimensions() == (IMAGE_SIZE, IMAGE_SIZE) {
            *img
        } else {
            resized = imageops::resize(*img, IMAGE_SIZE, IMAGE_SIZE, FilterType::Triangle);
            &resized
        };
        let (r, gb) = planes.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = px[0] as f32 / 127.5 - 1.0;
            g[i] = px[1] as f32 / 127.5 - 1.0;
            b[i] = px[2] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_vec(data, (images.len(), 3, n, n), device)
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
    pub fn judge(&self, image: &RgbImage) -> Result<Verdict, JudgeError> {
        let mut verdicts = self.judge_batch(std::slice::from_ref(image))?;
        verdicts
            .pop()
            .ok_or_else(|| JudgeError::Candle(candle_core::Error::Msg("judge: no verdict".into())))
    }

    /// Judges many images, batched. Errors are those of the network (its shapes are checked
    /// at load, so none is expected).
    pub fn judge_batch(&self, images: &[RgbImage]) -> Result<Vec<Verdict>, JudgeError> {
        let mut out = Vec::with_capacity(images.len());
        for logits in self.logits(images)? {
            out.push(self.verdict(&logits)?);
        }
        Ok(out)
    }

    /// The network's 15 raw logits per image (object 4, colour 4, striped 2, character 3,
    /// figure 2), batched.
    pub fn logits(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, JudgeError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(CHUNK) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            let x = images_to_tensor(&refs, &self.device)?;
            out.extend(net::forward(&self.params, &x)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    fn verdict(&self, logits: &[f32]) -> Result<Verdict, JudgeError> {
        let object: [f32; 4] = head(logits, net::OBJECT)?;
        let colour: [f32; 4] = head(logits, net::COLOUR)?;
        let striped: [f32; 2] = head(logits, net::STRIPED)?;
        let character: [f32; 3] = head(logits, net::CHARACTER)?;
        let figure_p = head::<2>(logits, net::FIGURE)?[1];
        let figure = figure_p >= self.min_figure;
        let guess = |p: &[f32]| {
            let i = argmax(p);
            (i, p[i], figure && p[i] >= self.min_confidence)
        };
        let (o, oc, os) = guess(&object);
        let (c, cc, cs) = guess(&colour);
        let (s, sc, ss) = guess(&striped);
        let (k, kc, ks) = guess(&character);
        Ok(Verdict {
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
                object,
                colour,
                striped: striped[1],
                character,
                figure: figure_p,
            },
        })
    }
}
