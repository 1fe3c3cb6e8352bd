//! Single-file checkpoints: one `.safetensors` holding UNet, VAE and text encoder under the
//! original (CompVis / AUTOMATIC1111) key names, read as the diffusers components our modules
//! build from. See [`keys`] for the name conversion and [`infer`] for the configs.
pub mod infer;
pub mod keys;

use crate::io::tokenizer::ClipTokenizer;
use crate::models::clip::ClipTextConfig;
use crate::models::unet::UNetConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::sample::scheduler::{PredictionType, SchedulerConfig};
use crate::{Result, SdError};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use keys::{Layout, Mapped, Take, TextLayout};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Choices a single file cannot tell.
#[derive(Debug, Clone, Default)]
pub struct SingleFileOptions {
    /// A diffusers folder (or one with just its `*/config.json`, `scheduler/` and `tokenizer/`)
    /// whose configs are used instead of the standard SD 1.x / 2.x ones, as diffusers'
    /// `from_single_file(config=...)`.
    pub config_dir: Option<PathBuf>,
    /// What the UNet predicts, overriding the config (SD 2.x 768-v models predict velocity;
    /// nothing in the weights says so). Default: the config's, or epsilon.
    pub prediction_type: Option<PredictionType>,
}

/// The parsed configs of the four components.
#[derive(Debug, Clone)]
struct Configs {
    unet: Value,
    vae: Value,
    text_encoder: Value,
    scheduler: SchedulerConfig,
}

/// A single-file checkpoint, memory-mapped, with its key conversion worked out.
pub struct SingleFile {
    path: PathBuf,
    tensors: MmapedSafetensors,
    layout: Layout,
    configs: Configs,
    config_dir: Option<PathBuf>,
    /// checkpoint key → the diffusers tensors made from it.
    index: BTreeMap<String, Vec<Mapped>>,
}

impl std::fmt::Debug for SingleFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFile")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .finish()
    }
}

/// `config.json` of a component folder under `dir`, as JSON.
fn read_config(dir: &Path, rel: &str) -> Result<Value> {
    crate::io::json::read_json(&dir.join(rel))
}

/// A whole number from a config value that may be per block (all equal).
fn uniform(v: &Value, what: &str, path: &Path) -> Result<usize> {
    let bad = || {
        SdError::config(
            path,
            format!("`{what}`: expected one whole number, found {v}"),
        )
    };
    match v {
        Value::Array(items) => {
            let first = items.first().and_then(Value::as_u64).ok_or_else(bad)?;
            if items.iter().any(|x| x.as_u64() != Some(first)) {
                return Err(bad());
            }
            Ok(first as usize)
        }
        _ => v.as_u64().map(|n| n as usize).ok_or_else(bad),
    }
}

impl SingleFile {
    /// Opens `path`, works out SD 1.x or 2.x and every tensor's diffusers name. Errors name the
    /// file and the tensor or config value that does not fit.
    pub fn open(path: &Path, opts: &SingleFileOptions) -> Result<Self> {
        crate::io::weights::validate_safetensors(path)?;
        // SAFETY: model files are read-only input and not modified while mapped.
        let tensors =
            unsafe { MmapedSafetensors::new(path) }.map_err(|source| SdError::Weights {
                path: path.to_path_buf(),
                source,
            })?;
        let shapes: infer::Shapes = tensors
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        let invalid = |msg: String| SdError::config(path, msg);
        if !shapes.keys().any(|k| k.starts_with(keys::UNET_PREFIX)) {
            return Err(invalid(format!(
                "not a Stable Diffusion single-file checkpoint: no `{}*` tensors",
                keys::UNET_PREFIX
            )));
        }
        let text = infer::text_layout(&shapes).map_err(invalid)?;
        let v = opts.prediction_type == Some(PredictionType::VPrediction);
        let configs = match &opts.config_dir {
            Some(dir) => {
                let mut scheduler =
                    SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
                if let Some(p) = opts.prediction_type {
                    scheduler.set("prediction_type", p.as_str());
                }
                Configs {
                    unet: read_config(dir, "unet/config.json")?,
                    vae: read_config(dir, "vae/config.json")?,
                    text_encoder: read_config(dir, "text_encoder/config.json")?,
                    scheduler,
                }
            }
            None => Configs {
                unet: infer::unet_config(&shapes, text, v).map_err(invalid)?,
                vae: infer::vae_config(&shapes, v).map_err(invalid)?,
                text_encoder: infer::text_encoder_config(&shapes, text).map_err(invalid)?,
                scheduler: SchedulerConfig::from_map(
                    infer::scheduler_config(
                        opts.prediction_type.unwrap_or(PredictionType::Epsilon),
                    )
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                ),
            },
        };
        let cfg_path = |rel: &str| match &opts.config_dir {
            Some(dir) => dir.join(rel),
            None => path.to_path_buf(),
        };
        let layout = Layout {
            text,
            unet_layers_per_block: uniform(
                configs
                    .unet
                    .get("layers_per_block")
                    .unwrap_or(&Value::from(2)),
                "layers_per_block",
                &cfg_path("unet/config.json"),
            )?,
            vae_up_blocks: configs
                .vae
                .get("up_block_types")
                .and_then(Value::as_array)
                .map_or(4, Vec::len),
            text_layers: uniform(
                configs
                    .text_encoder
                    .get("num_hidden_layers")
                    .unwrap_or(&Value::from(12)),
                "num_hidden_layers",
                &cfg_path("text_encoder/config.json"),
            )?,
        };
        let mut index = BTreeMap::new();
        for key in shapes.keys() {
            let mapped = keys::map_key(key, &layout).map_err(invalid)?;
            if !mapped.is_empty() {
                index.insert(key.clone(), mapped);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            layout,
            configs,
            config_dir: opts.config_dir.clone(),
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SD 1.x (CLIP) or SD 2.x (OpenCLIP).
    pub fn text_layout(&self) -> TextLayout {
        self.layout.text
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, v: &Value, what: &str) -> Result<T> {
        serde_json::from_value(v.clone())
            .map_err(|e| SdError::config(&self.path, format!("{what} config: {e}")))
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        let cfg: UNetConfig = self.parse(&self.configs.unet, "UNet")?;
        cfg.resolve()
            .map_err(|m| SdError::config(&self.path, format!("UNet config: {m}")))?;
        Ok(cfg)
    }

    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        let cfg: AutoencoderKLConfig = self.parse(&self.configs.vae, "VAE")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn text_encoder_config(&self) -> Result<ClipTextConfig> {
        let cfg: ClipTextConfig = self.parse(&self.configs.text_encoder, "text encoder")?;
        cfg.validate()
            .map_err(|e| SdError::config(&self.path, format!("text encoder config: {e}")))?;
        Ok(cfg)
    }

    pub fn scheduler_config(&self) -> SchedulerConfig {
        self.configs.scheduler.clone()
    }

    /// The config folder's `tokenizer/` when it has one, else the CLIP tokenizer shipped in
    /// `data/clip-tokenizer` with SD 1.x's or SD 2.x's padding (`<|endoftext|>` / `!`).
    pub fn tokenizer(&self) -> Result<ClipTokenizer> {
        if let Some(dir) = &self.config_dir {
            let tok = dir.join("tokenizer");
            if tok.is_dir() {
                return ClipTokenizer::from_dir(&tok);
            }
        }
        let data = fmn_core::data_dir().join("clip-tokenizer");
        let (vocab, merges) = (data.join("vocab.json"), data.join("merges.txt"));
        match self.layout.text {
            TextLayout::Clip => ClipTokenizer::from_files(&vocab, &merges),
            TextLayout::OpenClip => ClipTokenizer::from_files_with_config(
                &vocab,
                &merges,
                &data.join("sd2/tokenizer_config.json"),
            ),
        }
    }

    /// The number of values in the file's tensors that go into `component` under a diffusers
    /// name that `keep` selects (a fused tensor counts whole).
    pub fn parameter_count(&self, component: &str, keep: impl Fn(&str) -> bool) -> u64 {
        self.index
            .iter()
            .filter(|(_, mapped)| {
                mapped
                    .iter()
                    .any(|m| m.component == component && keep(&m.name))
            })
            .filter_map(|(key, _)| self.tensors.get(key).ok())
            .map(|view| view.shape().iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// Every tensor of `component` (`unet`, `vae`, `text_encoder`) under its diffusers name,
    /// as `dtype` on `device`.
    pub fn component_tensors(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        self.component_tensors_where(component, dtype, device, |_| true)
    }

    /// As [`Self::component_tensors`], only the tensors whose diffusers name `keep` selects;
    /// the others are neither read nor converted.
    pub fn component_tensors_where(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
        keep: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let mut holds_component = false;
        for (key, mapped) in &self.index {
            holds_component |= mapped.iter().any(|m| m.component == component);
            let wanted = |m: &&Mapped| m.component == component && keep(&m.name);
            if !mapped.iter().any(|m| wanted(&m)) {
                continue;
            }
            let t = self.load(key)?;
            for m in mapped.iter().filter(wanted) {
                let t = self.take(key, &t, m.take)?;
                out.insert(m.name.clone(), t.to_dtype(dtype)?.to_device(device)?);
            }
        }
        // A selection may be empty (the caller names what it lacked, as for a folder); a
        // component with no tensors at all is the file's fault.
        if !holds_component {
            return Err(SdError::config(
                &self.path,
                format!("the checkpoint holds no {component} tensors"),
            ));
        }
        Ok(out)
    }

    fn load(&self, key: &str) -> Result<Tensor> {
        self.tensors
            .load(key, &Device::Cpu)
            .map_err(|source| SdError::Weights {
                path: self.path.clone(),
                source,
            })
    }

    fn take(&self, key: &str, t: &Tensor, take: Take) -> Result<Tensor> {
        let bad = |what: &str| {
            SdError::config(
                &self.path,
                format!("tensor `{key}` has shape {:?}, expected {what}", t.dims()),
            )
        };
        Ok(match take {
            Take::Whole => t.clone(),
            Take::Squeeze => match t.dims() {
                [o, i, 1, 1] | [o, i, 1] => t.reshape((*o, *i))?,
                [_, _] => t.clone(),
                _ => return Err(bad("a 1×1 convolution kernel")),
            },
            Take::Third(part) => {
                let n = t.dim(0)?;
                if n % 3 != 0 {
                    return Err(bad("a fused q/k/v projection (rows a multiple of 3)"));
                }
                t.narrow(0, part * n / 3, n / 3)?
            }
        })
    }

    /// The checkpoint key a diffusers tensor comes from, and how.
    pub fn source_of(&self, component: &str, name: &str) -> Option<(&str, Take)> {
        self.index.iter().find_map(|(key, mapped)| {
            mapped
                .iter()
                .find(|m| m.component == component && m.name == name)
                .map(|m| (key.as_str(), m.take))
        })
    }

    /// Writes this checkpoint with `patches` added to `out` (see [`Self::write_with`]); every
    /// patched tensor must hash as the patches recorded. Returns the number of checkpoint
    /// tensors rewritten.
    pub fn write_patched(
        &self,
        out: &Path,
        patches: &[crate::io::patch::Patch],
        extra_metadata: &BTreeMap<String, String>,
    ) -> Result<usize> {
        crate::io::patch::check_components(patches)?;
        let mut changed = BTreeMap::new();
        for component in ["unet", "vae", "text_encoder"] {
            if !patches.iter().any(|p| p.touches(component)) {
                continue;
            }
            let mut weights = self.component_tensors(component, DType::F32, &Device::Cpu)?;
            crate::io::patch::apply_to_component(component, &mut weights, patches)?;
            let prefix = format!("{component}.");
            for p in patches {
                for key in p.deltas.keys() {
                    if let Some(name) = key.strip_prefix(&prefix) {
                        changed.insert(
                            (component.to_string(), name.to_string()),
                            weights[name].clone(),
                        );
                    }
                }
            }
        }
        self.write_with(out, &changed, extra_metadata)
    }

    /// Writes this checkpoint to `out` with the diffusers-named tensors of `changed` (per
    /// component) put back under their checkpoint keys in their original dtype and shape; every
    /// other tensor and the file's metadata (plus `extra_metadata`) are copied as they are.
    /// Atomic.
    pub fn write_with(
        &self,
        out: &Path,
        changed: &BTreeMap<(String, String), Tensor>,
        extra_metadata: &BTreeMap<String, String>,
    ) -> Result<usize> {
        let mut by_key: BTreeMap<&str, Vec<(Take, &Tensor)>> = BTreeMap::new();
        for ((component, name), t) in changed {
            let (key, take) = self.source_of(component, name).ok_or_else(|| {
                SdError::config(
                    &self.path,
                    format!("no checkpoint tensor holds {component} `{name}`"),
                )
            })?;
            by_key.entry(key).or_default().push((take, t));
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (key, _) in self.tensors.tensors() {
            let original = self.load(&key)?;
            let value = match by_key.get(key.as_str()) {
                None => original,
                Some(parts) => self.put_back(&key, &original, parts)?,
            };
            tensors.insert(key, value);
        }
        let metadata = {
            let mut metadata = crate::io::weights::read_metadata(&self.path)?.unwrap_or_default();
            metadata.extend(extra_metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            (!metadata.is_empty()).then_some(metadata)
        };
        crate::io::weights::save_safetensors_atomic(out, &tensors, metadata)?;
        Ok(by_key.len())
    }

    fn put_back(&self, key: &str, original: &Tensor, parts: &[(Take, &Tensor)]) -> Result<Tensor> {
        let dtype = original.dtype();
        let mut value = original.to_dtype(DType::F32)?;
        for (take, t) in parts {
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            value = match take {
                Take::Whole => t,
                Take::Squeeze => t.reshape(original.dims())?,
                Take::Third(part) => {
                    let n = original.dim(0)? / 3;
                    let mut thirds: Vec<Tensor> = (0..3)
                        .map(|p| value.narrow(0, p * n, n))
                        .collect::<candle_core::Result<_>>()?;
                    thirds[*part] = t;
                    Tensor::cat(&thirds, 0)?
                }
            };
        }
        if value.dims() != original.dims() {
            return Err(SdError::config(
                &self.path,
                format!(
                    "tensor `{key}`: the new value has shape {:?}, the checkpoint {:?}",
                    value.dims(),
                    original.dims()
                ),
            ));
        }
        Ok(value.to_dtype(dtype)?)
    }
}
