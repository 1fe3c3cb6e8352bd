//! Learned token embeddings (textual inversion): reading and writing the three common file
//! layouts, and adding the tokens to a tokenizer and text encoder.
//!
//! Layouts read by [`TokenEmbedding::load`]:
//! - fmn's own (`format` = `fmn-embedding/1` in the metadata): one `[D]` tensor per placeholder
//!   token under the token's own name, the order in metadata `tokens`; prompts write the tokens.
//! - AUTOMATIC1111 (`emb_params` `[n, D]`): the file stem is the word that stands for the
//!   concept; it expands to `n` added tokens `stem`, `stem_1`, ... as diffusers does.
//! - diffusers' `learned_embeds.safetensors` (one tensor, `[D]` or `[n, D]`, named by its token):
//!   the tensor name is the word, expanded likewise.
use crate::io::tokenizer::ClipTokenizer;
use crate::models::clip::ClipTextModel;
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The value of the `format` metadata entry of fmn's own layout.
pub const FORMAT: &str = "fmn-embedding/1";

/// Which layout [`TokenEmbedding::save`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingLayout {
    /// One tensor per token, named by the token, with fmn's metadata.
    Fmn,
    /// AUTOMATIC1111's `emb_params` `[n, D]` (the concept is then invoked by the file name).
    A1111,
}

/// Where an embedding came from and how it was made (fmn's layout records all of it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingMeta {
    /// `fmn`, `a1111` or `diffusers`.
    pub source: String,
    /// One initialiser per token (`word`, `<rand-σ>` or `<zero>`), when known.
    pub initializers: Vec<String>,
    /// [`token_table_fingerprint`] of the text encoder it was learned on, when known.
    pub base_fingerprint: Option<String>,
    /// Training settings (JSON), when known.
    pub settings: serde_json::Value,
    pub fmn_version: Option<String>,
}

/// Placeholder tokens and their learned vectors.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    /// The tokens to add to the tokenizer, in row order.
    pub tokens: Vec<String>,
    /// `[n, D]` (f32, CPU).
    pub vectors: Tensor,
    /// A word that prompts write for the whole sequence of tokens (A1111 and diffusers
    /// layouts); `None` when prompts write the tokens themselves.
    pub trigger: Option<String>,
    pub meta: EmbeddingMeta,
}

fn bad(path: &Path, message: impl Into<String>) -> SdError {
    SdError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A short hash of a text encoder's token-embedding table: which base an embedding belongs to.
pub fn token_table_fingerprint(text_encoder: &ClipTextModel) -> Result<String> {
    let hash = crate::io::patch::tensor_hash(text_encoder.token_embedding_table())?;
    Ok(hash.chars().take(16).collect())
}

/// The tokens `name`, `name_1`, ... that diffusers adds for an `n`-vector embedding.
fn expanded_tokens(name: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                name.to_string()
            } else {
                format!("{name}_{i}")
            }
        })
        .collect()
}

impl TokenEmbedding {
    pub fn new(tokens: Vec<String>, vectors: Tensor, meta: EmbeddingMeta) -> Result<Self> {
        let (n, _) = vectors.dims2()?;
        if n != tokens.len() || n == 0 {
            return Err(SdError::Invalid(format!(
                "{} tokens but {n} vectors",
                tokens.len()
            )));
        }
        Ok(Self {
            tokens,
            vectors: vectors.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            trigger: None,
            meta,
        })
    }

    /// The vector width `D`.
    pub fn width(&self) -> usize {
        self.vectors.dim(1).unwrap_or(0)
    }

    /// What stands for the concept in a prompt: the trigger word, or the tokens.
    pub fn concept_text(&self) -> String {
        self.trigger
            .clone()
            .unwrap_or_else(|| self.tokens.join(" "))
    }

    /// `prompt` with each whole-word trigger replaced by the tokens it stands for.
    pub fn expand(&self, prompt: &str) -> String {
        let Some(trigger) = &self.trigger else {
            return prompt.to_string();
        };
        if self.tokens.len() == 1 {
            return prompt.to_string();
        }
        let joined = self.tokens.join(" ");
        prompt
            .split(' ')
            .map(|w| if w == trigger { joined.as_str() } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads any of the three layouts (see the module documentation).
    pub fn load(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if matches!(ext.as_str(), "pt" | "bin" | "ckpt" | "pth") {
            return Err(bad(
                path,
                "pickle files are not read (they can run code); convert the embedding to .safetensors",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| SdError::io(path, e))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| SdError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| SdError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = crate::io::weights::load_tensors(path, DType::F32, &Device::Cpu)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        if metadata.get("format").map(String::as_str) == Some(FORMAT) {
            return Self::from_fmn(path, &metadata, tensors);
        }
        if let Some(params) = tensors.get("emb_params") {
            let vectors = as_rows(path, "emb_params", params)?;
            let n = vectors.dim(0)?;
            let name = metadata.get("name").cloned().unwrap_or(stem);
            return Ok(Self {
                tokens: expanded_tokens(&name, n),
                vectors,
                trigger: Some(name),
                meta: EmbeddingMeta {
                    source: "a1111".into(),
                    ..Default::default()
                },
            });
        }
        match names.as_slice() {
            [name] => {
                let vectors = as_rows(path, name, &tensors[name])?;
                let n = vectors.dim(0)?;
                Ok(Self {
                    tokens: expanded_tokens(name, n),
                    vectors,
                    trigger: Some(name.clone()),
                    meta: EmbeddingMeta {
                        source: "diffusers".into(),
                        ..Default::default()
                    },
                })
            }
            [] => Err(bad(path, "the file holds no tensor")),
            _ => Err(bad(
                path,
                format!(
                    "not an embedding file: {} tensors ({}) but neither `emb_params` (AUTOMATIC1111) nor metadata `format` = `{FORMAT}`",
                    names.len(),
                    names.join(", ")
                ),
            )),
        }
    }

    fn from_fmn(
        path: &Path,
        metadata: &HashMap<String, String>,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Self> {
        let json = |key: &str| -> Result<serde_json::Value> {
            let text = metadata
                .get(key)
                .ok_or_else(|| bad(path, format!("metadata `{key}` is missing")))?;
            serde_json::from_str(text)
                .map_err(|e| bad(path, format!("metadata `{key}` is not valid JSON: {e}")))
        };
        let tokens: Vec<String> = serde_json::from_value(json("tokens")?).map_err(|e| {
            bad(
                path,
                format!("metadata `tokens` must be a list of strings: {e}"),
            )
        })?;
        let initializers: Vec<String> =
            serde_json::from_value(json("initializers")?).map_err(|e| {
                bad(
                    path,
                    format!("metadata `initializers` must be a list of strings: {e}"),
                )
            })?;
        let mut rows = Vec::with_capacity(tokens.len());
        for t in &tokens {
            let v = tensors.get(t).ok_or_else(|| {
                bad(
                    path,
                    format!("metadata `tokens` names `{t}`, but the file has no such tensor"),
                )
            })?;
            let v = as_rows(path, t, v)?;
            if v.dim(0)? != 1 {
                return Err(bad(
                    path,
                    format!("tensor `{t}` must be one vector [D], got {:?}", v.dims()),
                ));
            }
            rows.push(v);
        }
        if rows.is_empty() {
            return Err(bad(path, "metadata `tokens` is empty"));
        }
        let width = rows[0].dim(1)?;
        if let Some(bad_row) = rows.iter().position(|r| r.dim(1).ok() != Some(width)) {
            return Err(bad(
                path,
                format!(
                    "tensor `{}` is {} wide, but `{}` is {width}",
                    tokens[bad_row],
                    rows[bad_row].dim(1)?,
                    tokens[0]
                ),
            ));
        }
        if let Some(w) = metadata.get("text_width") {
            if w.parse::<usize>().ok() != Some(width) {
                return Err(bad(
                    path,
                    format!("metadata `text_width` is {w} but the vectors are {width} wide"),
                ));
            }
        }
        Ok(Self {
            tokens,
            vectors: Tensor::cat(&rows, 0)?,
            trigger: None,
            meta: EmbeddingMeta {
                source: "fmn".into(),
                initializers,
                base_fingerprint: metadata.get("base_fingerprint").cloned(),
                settings: json("settings").unwrap_or(serde_json::Value::Null),
                fmn_version: metadata.get("fmn_version").cloned(),
            },
        })
    }

    /// Writes the embedding atomically in `layout`.
    pub fn save(&self, path: &Path, layout: EmbeddingLayout) -> Result<()> {
        let mut tensors = HashMap::new();
        let mut metadata = HashMap::new();
        match layout {
            EmbeddingLayout::Fmn => {
                for (i, t) in self.tokens.iter().enumerate() {
                    tensors.insert(t.clone(), self.vectors.get(i)?.contiguous()?);
                }
                let m = &self.meta;
                metadata.insert("format".into(), FORMAT.into());
                metadata.insert(
                    "tokens".into(),
                    serde_json::to_string(&self.tokens).unwrap_or_default(),
                );
                metadata.insert(
                    "initializers".into(),
                    serde_json::to_string(&m.initializers).unwrap_or_default(),
                );
                metadata.insert("text_width".into(), self.width().to_string());
                if let Some(f) = &m.base_fingerprint {
                    metadata.insert("base_fingerprint".into(), f.clone());
                }
                metadata.insert("settings".into(), m.settings.to_string());
                metadata.insert(
                    "fmn_version".into(),
                    m.fmn_version
                        .clone()
                        .unwrap_or_else(|| fmn_core::VERSION.into()),
                );
            }
            EmbeddingLayout::A1111 => {
                tensors.insert("emb_params".into(), self.vectors.contiguous()?);
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default();
                metadata.insert("name".into(), name);
            }
        }
        crate::io::weights::save_safetensors_atomic(path, &tensors, Some(metadata))
    }
}

fn as_rows(path: &Path, name: &str, t: &Tensor) -> Result<Tensor> {
    match t.dims() {
        [d] if *d > 0 => Ok(t.reshape((1, *d))?),
        [n, d] if *n > 0 && *d > 0 => Ok(t.clone()),
        other => Err(bad(
            path,
            format!("tensor `{name}` must be [D] or [n, D], got {other:?}"),
        )),
    }
}

/// Embeddings added to a tokenizer: the rows the text encoder reads for the new ids, and the
/// trigger words to expand in prompts.
#[derive(Debug, Clone)]
pub struct AddedTokens {
    /// `[n, D]` on the text encoder's device and dtype: row `j` is id `vocab_size + j`.
    pub rows: Tensor,
    embeddings: Vec<TokenEmbedding>,
}

impl AddedTokens {
    /// Adds every embedding's tokens to `tokenizer`; errors when a width does not match the text
    /// encoder or a token already exists. `names[i]` names embedding `i` in errors (its file).
    pub fn install(
        embeddings: Vec<TokenEmbedding>,
        names: &[String],
        tokenizer: &mut ClipTokenizer,
        text_encoder: &ClipTextModel,
    ) -> Result<Self> {
        let width = text_encoder.hidden_size();
        let vocab = text_encoder.vocab_size();
        if tokenizer.vocab_size() != vocab {
            return Err(SdError::Invalid(format!(
                "the tokenizer has {} tokens but the text encoder's table has {vocab} rows; embeddings cannot be added",
                tokenizer.vocab_size()
            )));
        }
        let mut rows = Vec::new();
        // Tokens added so far: each embedding's ids follow the previous ones'.
        let mut added = 0;
        for (i, e) in embeddings.iter().enumerate() {
            let name = names.get(i).map(String::as_str).unwrap_or("embedding");
            if e.width() != width {
                return Err(SdError::Invalid(format!(
                    "{name}: the embedding is {} wide but the text encoder's tokens are {width} wide (an embedding for another model family?)",
                    e.width()
                )));
            }
            let refs: Vec<&str> = e.tokens.iter().map(String::as_str).collect();
            let ids = tokenizer
                .add_tokens(&refs)
                .map_err(|err| SdError::Invalid(format!("{name}: {err}")))?;
            let expected = vocab + added;
            if ids.first().map(|&id| id as usize) != Some(expected) {
                return Err(SdError::Invalid(format!(
                    "{name}: the added tokens got ids {ids:?}, expected from {expected}"
                )));
            }
            added += ids.len();
            rows.push(e.vectors.clone());
            // The fingerprint hashes f32 values: a table loaded in f16 / bf16 (`--dtype`) was
            // rounded and cannot be compared.
            let comparable = text_encoder.dtype() == candle_core::DType::F32;
            if let (Some(base), true, Ok(here)) = (
                &e.meta.base_fingerprint,
                comparable,
                token_table_fingerprint(text_encoder),
            ) {
                if *base != here {
                    tracing::warn!(
                        "{name} was learned on another text encoder (fingerprint {base}, this one {here})"
                    );
                }
            }
        }
        let rows = Tensor::cat(&rows, 0)?
            .to_dtype(text_encoder.dtype())?
            .to_device(text_encoder.device())?;
        Ok(Self { rows, embeddings })
    }

    /// `prompt` with every embedding's trigger word expanded to its tokens.
    pub fn expand(&self, prompt: &str) -> String {
        self.embeddings
            .iter()
            .fold(prompt.to_string(), |p, e| e.expand(&p))
    }
}
