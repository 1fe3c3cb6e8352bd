//! Weight patches: the changed tensors of a model as deltas, in one `.safetensors` file.
//!
//! Format `fmn-patch/1`:
//! - tensors: `{component}.{name}` (component `unet`, `text_encoder` or `vae`; `name` as in
//!   that component's weights file, i.e. diffusers' parameter name) → the delta, stored as
//!   `delta_dtype` (f16 by default, or f32);
//! - `__metadata__` (all strings): `format` = `fmn-patch/1`, `fmn_version`, `concepts` (JSON
//!   array of `{"name", "kind"}`), `settings` (a JSON object), `delta_dtype` (`f16`/`f32`),
//!   `base_hashes` (JSON object: key → `{"sha256": hex, "shape": [..]}`, the hash being
//!   [`tensor_hash`] of the base tensor) and `base_fingerprint` ([`fingerprint`] of the hashes).
//!
//! A patched weight is `base + delta`, computed in f32. Applying a patch first checks that
//! every patched base tensor hashes as recorded, so a patch is never applied to another model.
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "fmn-patch/1";

/// `(key prefix, sub-folder, weights file stem)` of the model components a patch may change.
pub const COMPONENTS: [(&str, &str, &str); 3] = [
    ("unet", "unet", "diffusion_pytorch_model"),
    ("text_encoder", "text_encoder", "model"),
    ("vae", "vae", "diffusion_pytorch_model"),
];

/// One forgotten concept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concept {
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchMeta {
    pub concepts: Vec<Concept>,
    /// Free-form settings of the run that made the patch (a list of them after a merge).
    pub settings: serde_json::Value,
    pub fmn_version: String,
    /// Key → [`tensor_hash`] of the base tensor the delta was computed against.
    pub base_hashes: BTreeMap<String, String>,
    /// [`fingerprint`] of `base_hashes`.
    pub base_fingerprint: String,
    /// The dtype deltas are stored in (F16 or F32).
    pub delta_dtype: DType,
}

/// A patch in memory: deltas are f32 tensors on the CPU.
#[derive(Debug, Clone)]
pub struct Patch {
    pub deltas: BTreeMap<String, Tensor>,
    pub meta: PatchMeta,
}

#[derive(Serialize, Deserialize)]
struct BaseEntry {
    sha256: String,
    shape: Vec<usize>,
}

/// sha256 (lower-case hex) of the tensor's values converted to f32, little-endian, row-major.
pub fn tensor_hash(t: &Tensor) -> Result<String> {
    let values = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 (hex) of the lines `key:hash\n`, in key order: identifies the base tensors a patch
/// was made for, and can be recomputed from the hashes alone.
pub fn fingerprint(base_hashes: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in base_hashes {
        h.update(format!("{k}:{v}\n").as_bytes());
    }
    hex::encode(h.finalize())
}

fn dtype_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F16 => Ok("f16"),
        DType::F32 => Ok("f32"),
        other => Err(SdError::Invalid(format!(
            "patch deltas are stored as f16 or f32, not {other:?}"
        ))),
    }
}

fn component_of(key: &str) -> Option<&'static str> {
    COMPONENTS.iter().map(|c| c.0).find(|p| {
        key.strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Whether every value of `t` is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

impl Patch {
    /// `base`: the original values of exactly the tensors in `deltas` (same keys, same shapes).
    pub fn from_deltas(
        base: &BTreeMap<String, Tensor>,
        deltas: BTreeMap<String, Tensor>,
        concepts: Vec<Concept>,
        settings: serde_json::Value,
        delta_dtype: DType,
    ) -> Result<Patch> {
        dtype_name(delta_dtype)?;
        if deltas.is_empty() {
            return Err(SdError::Invalid("a patch needs at least one delta".into()));
        }
        let mut base_hashes = BTreeMap::new();
        let mut stored = BTreeMap::new();
        for (key, delta) in deltas {
            if component_of(&key).is_none() {
                return Err(SdError::Invalid(format!(
                    "patch key `{key}` does not start with a component prefix (unet., text_encoder., vae.)"
                )));
            }
            let b = base.get(&key).ok_or_else(|| {
                SdError::Invalid(format!("no base tensor given for the delta `{key}`"))
            })?;
            if b.dims() != delta.dims() {
                return Err(SdError::Invalid(format!(
                    "delta `{key}` has shape {:?} but its base tensor has shape {:?}",
                    delta.dims(),
                    b.dims()
                )));
            }
            let delta = delta.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            if !all_finite(&delta)? {
                return Err(SdError::Invalid(format!(
                    "delta `{key}` holds non-finite values"
                )));
            }
            base_hashes.insert(key.clone(), tensor_hash(b)?);
            stored.insert(key, delta);
        }
        if let Some(extra) = base.keys().find(|k| !stored.contains_key(*k)) {
            return Err(SdError::Invalid(format!(
                "base tensor `{extra}` given without a delta"
            )));
        }
        let base_fingerprint = fingerprint(&base_hashes);
        Ok(Patch {
            deltas: stored,
            meta: PatchMeta {
                concepts,
                settings,
                fmn_version: fmn_core::VERSION.to_string(),
                base_hashes,
                base_fingerprint,
                delta_dtype,
            },
        })
    }

    /// The metadata entries of the file.
    fn metadata(&self) -> Result<HashMap<String, String>> {
        let m = &self.meta;
        let base: BTreeMap<&String, BaseEntry> = m
            .base_hashes
            .iter()
            .map(|(k, h)| {
                let shape = self
                    .deltas
                    .get(k)
                    .map(|t| t.dims().to_vec())
                    .ok_or_else(|| SdError::Invalid(format!("base hash `{k}` has no delta")))?;
                Ok((
                    k,
                    BaseEntry {
                        sha256: h.clone(),
                        shape,
                    },
                ))
            })
            .collect::<Result<_>>()?;
        Ok(HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("fmn_version".to_string(), m.fmn_version.clone()),
            ("concepts".to_string(), json(&m.concepts)),
            ("settings".to_string(), json(&m.settings)),
            (
                "delta_dtype".to_string(),
                dtype_name(m.delta_dtype)?.to_string(),
            ),
            ("base_hashes".to_string(), json(&base)),
            ("base_fingerprint".to_string(), m.base_fingerprint.clone()),
        ]))
    }

    /// Writes the patch atomically (a temporary sibling renamed over `path`).
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.deltas.len() != self.meta.base_hashes.len() {
            return Err(SdError::Invalid(format!(
                "patch holds {} deltas but {} base hashes",
                self.deltas.len(),
                self.meta.base_hashes.len()
            )));
        }
        let metadata = self.metadata()?;
        let tensors = self
            .deltas
            .iter()
            .map(|(k, t)| {
                let stored = t.to_dtype(self.meta.delta_dtype)?;
                if !all_finite(&stored)? {
                    return Err(SdError::Invalid(format!(
                        "delta `{k}` does not fit in {}: store the patch as f32",
                        dtype_name(self.meta.delta_dtype)?
                    )));
                }
                Ok((k.clone(), stored))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        crate::io::weights::save_safetensors_atomic(path, &tensors, Some(metadata))
    }

    /// Reads and checks a patch file: format, metadata, dtypes, shapes against the recorded
    /// base shapes, the fingerprint, and that every delta is finite.
    pub fn load(path: &Path) -> Result<Patch> {
        let bad = |message: String| SdError::patch(path, message);
        let bytes = std::fs::read(path).map_err(|e| SdError::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| SdError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |name: &str| {
            meta.get(name).ok_or_else(|| {
                bad(format!(
                    "not an {FORMAT} file: the metadata entry `{name}` is missing"
                ))
            })
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(bad(format!(
                "not an {FORMAT} file: metadata `format` is `{format}`, expected `{FORMAT}`"
            )));
        }
        let parse = |name: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(name)?)
                .map_err(|e| bad(format!("metadata `{name}` is not valid JSON: {e}")))
        };
        let concepts: Vec<Concept> = serde_json::from_value(parse("concepts")?).map_err(|e| {
            bad(format!(
                "metadata `concepts` must be a list of {{\"name\", \"kind\"}}: {e}"
            ))
        })?;
        let settings = parse("settings")?;
        let base: BTreeMap<String, BaseEntry> = serde_json::from_value(parse("base_hashes")?)
            .map_err(|e| {
                bad(format!(
                    "metadata `base_hashes` must map keys to {{\"sha256\", \"shape\"}}: {e}"
                ))
            })?;
        let delta_dtype = match get("delta_dtype")?.as_str() {
            "f16" => DType::F16,
            "f32" => DType::F32,
            other => {
                return Err(bad(format!(
                    "metadata `delta_dtype` is `{other}`, expected f16 or f32"
                )))
            }
        };
        let fmn_version = get("fmn_version")?.clone();
        let base_fingerprint = get("base_fingerprint")?.clone();

        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            SdError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let mut deltas = BTreeMap::new();
        for (key, t) in tensors {
            let entry = base.get(&key).ok_or_else(|| {
                bad(format!(
                    "tensor `{key}` has no entry in metadata `base_hashes`"
                ))
            })?;
            if component_of(&key).is_none() {
                return Err(bad(format!(
                    "tensor `{key}` does not start with a component prefix (unet., text_encoder., vae.)"
                )));
            }
            if t.dims() != entry.shape.as_slice() {
                return Err(bad(format!(
                    "tensor `{key}` has shape {:?}, but its base tensor has shape {:?}",
                    t.dims(),
                    entry.shape
                )));
            }
            if t.dtype() != delta_dtype {
                return Err(bad(format!(
                    "tensor `{key}` is stored as {:?}, expected {} (metadata `delta_dtype`)",
                    t.dtype(),
                    dtype_name(delta_dtype)?
                )));
            }
            if !all_finite(&t)? {
                return Err(bad(format!("tensor `{key}` holds non-finite values")));
            }
            deltas.insert(key, t.to_dtype(DType::F32)?);
        }
        if let Some(missing) = base.keys().find(|k| !deltas.contains_key(*k)) {
            return Err(bad(format!(
                "metadata `base_hashes` names `{missing}`, but the file has no such tensor"
            )));
        }
        let base_hashes: BTreeMap<String, String> =
            base.into_iter().map(|(k, e)| (k, e.sha256)).collect();
        let expected = fingerprint(&base_hashes);
        if expected != base_fingerprint {
            return Err(bad(format!(
                "metadata `base_fingerprint` is {base_fingerprint}, but the base hashes give {expected}"
            )));
        }
        Ok(Patch {
            deltas,
            meta: PatchMeta {
                concepts,
                settings,
                fmn_version,
                base_hashes,
                base_fingerprint,
                delta_dtype,
            },
        })
    }

    /// One patch for several concepts: deltas of the same tensor are summed (they must have
    /// been made against the same base values), concept lists are concatenated, `settings`
    /// becomes the list of the inputs' settings, and deltas are stored as f32 if any input's are.
    pub fn merge(patches: &[Patch]) -> Result<Patch> {
        if patches.is_empty() {
            return Err(SdError::Invalid(
                "nothing to merge: no patches given".into(),
            ));
        }
        let mut deltas: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut base_hashes: BTreeMap<String, String> = BTreeMap::new();
        let mut concepts = Vec::new();
        let mut settings = Vec::new();
        let mut delta_dtype = DType::F16;
        for (i, p) in patches.iter().enumerate() {
            for (key, delta) in &p.deltas {
                let hash = p.meta.base_hashes.get(key).ok_or_else(|| {
                    SdError::PatchMismatch(format!(
                        "patch {} ({}) has no base hash for `{key}`",
                        i + 1,
                        p.describe()
                    ))
                })?;
                match base_hashes.get(key) {
                    Some(h) if h != hash => {
                        return Err(SdError::PatchMismatch(format!(
                            "patch {} ({}) was made for another base model than the patches before it: \
                             tensor `{key}` has base hash {hash}, expected {h}",
                            i + 1,
                            p.describe()
                        )))
                    }
                    Some(_) => {
                        let sum = (&deltas[key] + delta)?;
                        deltas.insert(key.clone(), sum);
                    }
                    None => {
                        base_hashes.insert(key.clone(), hash.clone());
                        deltas.insert(key.clone(), delta.clone());
                    }
                }
            }
            concepts.extend(p.meta.concepts.iter().cloned());
            settings.push(p.meta.settings.clone());
            if p.meta.delta_dtype == DType::F32 {
                delta_dtype = DType::F32;
            }
        }
        let base_fingerprint = fingerprint(&base_hashes);
        Ok(Patch {
            deltas,
            meta: PatchMeta {
                concepts,
                settings: serde_json::Value::Array(settings),
                fmn_version: fmn_core::VERSION.to_string(),
                base_hashes,
                base_fingerprint,
                delta_dtype,
            },
        })
    }

    /// Bytes the deltas take in the file (elements × the stored dtype's size).
    pub fn size_bytes(&self) -> usize {
        self.deltas
            .values()
            .map(|t| t.elem_count() * self.meta.delta_dtype.size_in_bytes())
            .sum()
    }

    /// `concepts a, b` (or `no concepts`), for messages.
    pub fn describe(&self) -> String {
        if self.meta.concepts.is_empty() {
            "no concepts".into()
        } else {
            let names: Vec<&str> = self.meta.concepts.iter().map(|c| c.name.as_str()).collect();
            format!("concepts {}", names.join(", "))
        }
    }

    /// Whether any delta belongs to `component` (`unet`, `text_encoder`, `vae`).
    pub fn touches(&self, component: &str) -> bool {
        self.deltas
            .keys()
            .any(|k| component_of(k) == Some(component))
    }
}

fn json<T: Serialize>(v: &T) -> String {
    // Plain data (strings, numbers, maps with string keys) always serialises; "null" is the
    // harmless answer to the impossible case.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Applies `patches` to the weights of one component (`weights`: the tensors of its weights
/// file, any dtype): every patched tensor must exist, have the delta's shape and hash as the
/// patch recorded, else an error naming the patch and the tensor. Patched tensors are replaced
/// by `base + Σ deltas`, computed and returned as f32 (on the base tensor's device); the
/// others are left as they are. Returns the number of tensors changed.
pub fn apply_to_component(
    component: &str,
    weights: &mut HashMap<String, Tensor>,
    patches: &[Patch],
) -> Result<usize> {
    let prefix = format!("{component}.");
    let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut checked: HashMap<String, String> = HashMap::new();
    for (i, p) in patches.iter().enumerate() {
        let mismatch = |what: String| {
            SdError::PatchMismatch(format!(
                "patch {} ({}) was made for another base model: {what} (patch base fingerprint {})",
                i + 1,
                p.describe(),
                p.meta.base_fingerprint
            ))
        };
        for (key, delta) in &p.deltas {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            let base = weights
                .get(name)
                .ok_or_else(|| mismatch(format!("the model has no tensor `{key}`")))?;
            if base.dims() != delta.dims() {
                return Err(mismatch(format!(
                    "tensor `{key}` has shape {:?} in the model, {:?} in the patch",
                    base.dims(),
                    delta.dims()
                )));
            }
            let hash = match checked.get(name) {
                Some(h) => h.clone(),
                None => {
                    let h = tensor_hash(base)?;
                    checked.insert(name.to_string(), h.clone());
                    h
                }
            };
            if p.meta.base_hashes.get(key) != Some(&hash) {
                return Err(mismatch(format!("tensor `{key}` differs")));
            }
            let delta = delta.to_device(base.device())?;
            let sum = match sums.remove(name) {
                Some(s) => (s + delta)?,
                None => delta,
            };
            sums.insert(name.to_string(), sum);
        }
    }
    let n = sums.len();
    for (name, delta) in sums {
        let base = weights[&name].to_dtype(DType::F32)?;
        weights.insert(name, (base + delta)?);
    }
    Ok(n)
}

/// Every patch key must name a known component; returns an error naming the first that does not.
pub fn check_components(patches: &[Patch]) -> Result<()> {
    for (i, p) in patches.iter().enumerate() {
        if let Some(key) = p.deltas.keys().find(|k| component_of(k).is_none()) {
            return Err(SdError::PatchMismatch(format!(
                "patch {} ({}): tensor `{key}` belongs to no model component",
                i + 1,
                p.describe()
            )));
        }
    }
    Ok(())
}

/// Builds a model from the weights `file` of the component `component` with `patches` added:
/// when no patch touches it the weights are memory-mapped as usual; otherwise they are read
/// into memory, patched and converted to `dtype`.
pub fn build_patched_file<T>(
    file: &Path,
    component: &str,
    dtype: DType,
    device: &Device,
    patches: &[Patch],
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    if !patches.iter().any(|p| p.touches(component)) {
        let vb = crate::io::weights::mmap_var_builder(file, dtype, device)?;
        return crate::io::weights::in_file(file, build(vb));
    }
    crate::io::weights::validate_safetensors(file)?;
    let weights =
        crate::io::weights::in_file(file, candle_core::safetensors::load(file, &Device::Cpu))?;
    let vb = patched_var_builder(component, weights, patches, dtype, device)?;
    crate::io::weights::in_file(file, build(vb))
}

/// A [`VarBuilder`] over one component's tensors (`weights`, diffusers names, on the CPU) with
/// `patches` added (see [`apply_to_component`]), converted to `dtype` on `device`.
pub fn patched_var_builder(
    component: &str,
    mut weights: HashMap<String, Tensor>,
    patches: &[Patch],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    if patches.iter().any(|p| p.touches(component)) {
        let n = apply_to_component(component, &mut weights, patches)?;
        tracing::info!("{component}: {n} tensors patched");
    }
    let weights = weights
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?.to_device(device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(VarBuilder::from_tensors(weights, dtype, device))
}
