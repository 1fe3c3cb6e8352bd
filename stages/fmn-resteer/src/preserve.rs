//! Automatic preservation: the prompts whose cross-attention keys and values a re-steering
//! keeps where they were, and the one statistic the solve and the preservation term need of
//! them — the Gram matrix `Σ PᵀP` of their context rows — cached on disk per (text encoder,
//! list). Entries naming a concept being forgotten are taken out exactly (their rows'
//! Gram subtracted), so one cached list serves every concept.
use crate::prompts::find_words;
use crate::ResteerError;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The lists built into the binary (`configs/preserve/`).
pub const SHIPPED: [(&str, &str); 5] = [
    (
        "objects",
        include_str!("../../../configs/preserve/objects.txt"),
    ),
    (
        "animals",
        include_str!("../../../configs/preserve/animals.txt"),
    ),
    (
        "scenes",
        include_str!("../../../configs/preserve/scenes.txt"),
    ),
    (
        "styles",
        include_str!("../../../configs/preserve/styles.txt"),
    ),
    (
        "people",
        include_str!("../../../configs/preserve/people.txt"),
    ),
];

/// The file a model folder may carry with its own preservation prompts.
pub const MODEL_LIST: &str = "preserve.txt";

/// Prompts encoded per text-encoder call.
const BATCH: usize = 32;

/// The prompts of a list in the `configs/preserve/` format: one entry per line, `#` comments,
/// `@template TEXT` lines whose `{}` each following entry fills; no template: whole prompts.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let mut templates: Vec<String> = Vec::new();
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix("@template") {
            let t = t.trim();
            if t.matches("{}").count() != 1 {
                return Err(format!(
                    "line {}: a template needs exactly one {{}}: {t:?}",
                    i + 1
                ));
            }
            templates.push(t.to_string());
            continue;
        }
        if templates.is_empty() {
            prompts.push(line.to_string());
        } else {
            prompts.extend(templates.iter().map(|t| t.replacen("{}", line, 1)));
        }
    }
    Ok(prompts)
}

/// The prompts of the list file `path`; a file with none is an error.
pub fn read_list(path: &Path) -> Result<Vec<String>, ResteerError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ResteerError::Input(format!("cannot read preserve list {}: {e}", path.display()))
    })?;
    let prompts = parse_list(&text)
        .map_err(|e| ResteerError::Input(format!("preserve list {}: {e}", path.display())))?;
    if prompts.is_empty() {
        return Err(ResteerError::Input(format!(
            "preserve list {} holds no prompts",
            path.display()
        )));
    }
    Ok(prompts)
}

/// The shipped lists whose entries are things an object may be replaced with (its siblings:
/// `crate::sibling`); an object replaced by "twins" or "a beach" would be drawn as them.
pub const OBJECT_LISTS: [&str; 2] = ["objects", "animals"];

/// The shipped lists' prompts.
pub fn shipped_prompts() -> Result<Vec<String>, ResteerError> {
    shipped_prompts_of(|_| true)
}

/// The prompts of the shipped lists whose name `wanted` accepts.
pub fn shipped_prompts_of(wanted: impl Fn(&str) -> bool) -> Result<Vec<String>, ResteerError> {
    let mut prompts = Vec::new();
    for (name, text) in SHIPPED.into_iter().filter(|(name, _)| wanted(name)) {
        prompts.extend(parse_list(text).map_err(|e| {
            ResteerError::Input(format!("built-in list configs/preserve/{name}.txt: {e}"))
        })?);
    }
    Ok(prompts)
}

/// Whether `prompt` names one of `names` (whole words, case-insensitive).
pub fn names_any(prompt: &str, names: &[String]) -> bool {
    names.iter().any(|n| find_words(prompt, n).is_some())
}

/// `Σ PᵀP` over context rows `P` (f64 `[d, d]`) and the number of rows.
#[derive(Debug, Clone)]
pub struct Gram {
    pub sum: Tensor,
    pub rows: usize,
}

impl Gram {
    /// Of the rows of `contexts` (`[rows, d]` or `[B, n, d]`).
    pub fn of(contexts: &Tensor) -> candle_core::Result<Self> {
        let d = contexts.dim(contexts.rank() - 1)?;
        let rows = contexts.elem_count() / d.max(1);
        // Detached: a statistic, never trained through (and summed over many batches).
        let p = contexts.detach().reshape((rows, d))?.to_dtype(DType::F64)?;
        Ok(Self {
            sum: p.t()?.matmul(&p)?,
            rows,
        })
    }

    /// The mean `Σ PᵀP / rows` (f64).
    pub fn mean(&self) -> candle_core::Result<Tensor> {
        self.sum.affine(1.0 / self.rows.max(1) as f64, 0.0)
    }

    fn minus(&self, other: &Gram) -> candle_core::Result<Self> {
        Ok(Self {
            sum: (&self.sum - &other.sum)?,
            rows: self.rows - other.rows,
        })
    }
}

/// Encodes prompts into context rows `[B, 77, d]`.
pub trait Encoder {
    fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor, ResteerError>;
    /// Identifies the encoder's function: a cache made with another encoder is never used.
    fn fingerprint(&self) -> Result<String, ResteerError>;
}

/// The Gram of `prompts` in batches.
pub fn gram_of(encoder: &dyn Encoder, prompts: &[&str]) -> Result<Option<Gram>, ResteerError> {
    let mut total: Option<Gram> = None;
    for chunk in prompts.chunks(BATCH) {
        let g = Gram::of(&encoder.encode_prompts(chunk)?)?;
        total = Some(match total {
            None => g,
            Some(t) => Gram {
                sum: (t.sum + g.sum)?,
                rows: t.rows + g.rows,
            },
        });
    }
    Ok(total)
}

/// Where the statistics of a list are kept between runs.
#[derive(Debug, Clone)]
pub struct GramCache {
    dir: PathBuf,
}

/// What a preservation statistic was built from, and how it was obtained.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreserveSummary {
    /// Prompts in the list, and those taken out because they name a concept being forgotten.
    pub prompts: usize,
    pub taken_out: usize,
    /// The cache file used or written, if any, and whether it was there already.
    pub cache: Option<PathBuf>,
    pub cache_hit: bool,
}

impl GramCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$FMN_CACHE_DIR`, else `$XDG_CACHE_HOME/fmn`, else `~/.cache/fmn`; `None` without any.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("FMN_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("fmn")))
            .or_else(|| env("HOME").map(|d| d.join(".cache/fmn")))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join("preserve").join(format!("{key}.safetensors"))
    }

    fn load(&self, path: &Path, key: &str, device: &Device) -> Option<Gram> {
        let bytes = std::fs::read(path).ok()?;
        let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        let meta = meta.metadata().as_ref()?;
        if meta.get("key")? != key {
            return None;
        }
        let rows: usize = meta.get("rows")?.parse().ok()?;
        let view = st.tensor("gram_sum").ok()?;
        let shape = view.shape().to_vec();
        if view.dtype() != safetensors::Dtype::F64 || shape.len() != 2 || shape[0] != shape[1] {
            return None;
        }
        let values: Vec<f64> = view
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        let sum = Tensor::from_vec(values, (shape[0], shape[1]), device).ok()?;
        Some(Gram { sum, rows })
    }

    fn store(&self, path: &Path, key: &str, gram: &Gram) -> Result<(), ResteerError> {
        let values = gram
            .sum
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let d = gram.sum.dim(0)?;
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![d, d], &bytes)
                .map_err(|e| ResteerError::Input(format!("preserve cache: {e}")))?;
        let meta = std::collections::HashMap::from([
            ("key".to_string(), key.to_string()),
            ("rows".to_string(), gram.rows.to_string()),
            ("format".to_string(), "fmn-preserve-gram/1".to_string()),
        ]);
        let data = safetensors::serialize([("gram_sum", view)], Some(meta))
            .map_err(|e| ResteerError::Input(format!("preserve cache: {e}")))?;
        // Temp file + rename: a reader sees the old file or the whole new one, never a part,
        // and two runs writing the same key write the same bytes.
        fmn_core::write_atomic(path, |f| std::io::Write::write_all(f, &data))
            .map_err(|e| ResteerError::Input(format!("cannot write {}: {e}", path.display())))
    }
}

/// The Gram of `prompts` without those naming any of `names`: the whole list's from the cache
/// (computed and stored when missing or made for another encoder), less the named entries'.
/// `None` when nothing is left to preserve.
pub fn preserved_gram(
    encoder: &dyn Encoder,
    prompts: &[String],
    names: &[String],
    cache: Option<&GramCache>,
    device: &Device,
) -> Result<(Option<Gram>, PreserveSummary), ResteerError> {
    let all: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let named: Vec<&str> = all
        .iter()
        .copied()
        .filter(|p| names_any(p, names))
        .collect();
    let mut summary = PreserveSummary {
        prompts: all.len(),
        taken_out: named.len(),
        cache: None,
        cache_hit: false,
    };
    if named.len() == all.len() {
        return Ok((None, summary));
    }
    let key = {
        let mut h = Sha256::new();
        h.update(encoder.fingerprint()?.as_bytes());
        for p in &all {
            h.update(b"\n");
            h.update(p.as_bytes());
        }
        hex::encode(h.finalize())
    };
    let whole = match cache {
        Some(c) => {
            let path = c.path(&key);
            let found = c.load(&path, &key, device);
            summary.cache_hit = found.is_some();
            let g = match found {
                Some(g) => g,
                None => {
                    let g = gram_of(encoder, &all)?
                        .ok_or_else(|| ResteerError::Input("no prompts to preserve".into()))?;
                    if let Err(e) = c.store(&path, &key, &g) {
                        tracing::warn!("preserve cache not written: {e}");
                    }
                    g
                }
            };
            summary.cache = Some(path);
            g
        }
        None => gram_of(encoder, &all)?
            .ok_or_else(|| ResteerError::Input("no prompts to preserve".into()))?,
    };
    let kept = match gram_of(encoder, &named)? {
        Some(n) => whole.minus(&n)?,
        None => whole,
    };
    Ok((Some(kept), summary))
}
