//! Initial vectors of the placeholder tokens: a word's embedding, noise or zero, as the
//! original's `initializer_tokens` (`word`, `<rand-σ>`, `<zero>`, or a token id).
use crate::InvertError;
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::clip::ClipTextModel;

/// One initialiser, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Initializer {
    Word(String),
    Random(f64),
    Zero,
    TokenId(usize),
}

impl Initializer {
    pub fn parse(text: &str) -> Result<Self, InvertError> {
        let t = text.trim();
        if t == "<zero>" {
            return Ok(Self::Zero);
        }
        if let Some(sigma) = t.strip_prefix("<rand-").and_then(|s| s.strip_suffix('>')) {
            return match sigma.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Ok(Self::Random(s)),
                _ => Err(InvertError::Input(format!(
                    "initializer `{t}`: σ must be a positive number, as in <rand-0.017>"
                ))),
            };
        }
        if t.is_empty() {
            return Err(InvertError::Input("an initializer is empty".into()));
        }
        if t.chars().all(|c| c.is_ascii_digit()) {
            return Ok(Self::TokenId(t.parse().map_err(|_| {
                InvertError::Input(format!("initializer `{t}` is not a token id"))
            })?));
        }
        Ok(Self::Word(t.to_string()))
    }

    /// The initial vector `[D]` (f32, on the text encoder's device). `token` names the
    /// placeholder in errors; `rng` draws the noise.
    pub fn vector(
        &self,
        token: &str,
        tokenizer: &ClipTokenizer,
        text_encoder: &ClipTextModel,
        rng: &mut NoiseRng,
    ) -> Result<Tensor, InvertError> {
        let d = text_encoder.hidden_size();
        let device: &Device = text_encoder.device();
        let table = text_encoder.token_embedding_table();
        let row = |id: usize| -> Result<Tensor, InvertError> {
            Ok(table.get(id)?.to_dtype(DType::F32)?.detach())
        };
        match self {
            Self::Zero => Ok(Tensor::zeros(d, DType::F32, device)?),
            Self::Random(sigma) => Ok((rng.randn(&[d], device)?.to_dtype(DType::F32)? * *sigma)?),
            Self::TokenId(id) => {
                if *id >= text_encoder.vocab_size() {
                    return Err(InvertError::Input(format!(
                        "initializer of `{token}`: token id {id} is outside the vocabulary ({} tokens)",
                        text_encoder.vocab_size()
                    )));
                }
                row(*id)
            }
            Self::Word(word) => {
                let ids = tokenizer.tokenize(word)?;
                match ids.as_slice() {
                    [id] => row(*id as usize),
                    _ => {
                        let pieces = tokenizer.tokenize_to_strings(word)?;
                        Err(InvertError::Input(format!(
                            "initializer `{word}` of `{token}` is {} tokens ({}); the initializer must be one token",
                            ids.len(),
                            pieces.join(" ")
                        )))
                    }
                }
            }
        }
    }
}
