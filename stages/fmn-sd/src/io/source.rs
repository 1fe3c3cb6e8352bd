//! Where a model comes from: a diffusers folder or a single-file checkpoint. Every stage opens
//! its `--model` through [`ModelSource::open`] and builds components from it, so both kinds work
//! everywhere.
use crate::io::patch::Patch;
use crate::io::single_file::SingleFile;
use crate::io::tokenizer::ClipTokenizer;
use crate::models::clip::ClipTextConfig;
use crate::models::unet::UNetConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::sample::scheduler::{PredictionType, SchedulerConfig};
use crate::{Result, SdError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use crate::io::single_file::SingleFileOptions as SourceOptions;

/// `(component, sub-folder, weights file stem)` of a diffusers folder.
const FOLDERS: [(&str, &str); 3] = [
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
];

/// The sub-folders a diffusers folder must have.
const COMPONENTS: [&str; 5] = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];

/// File extensions of pickle checkpoints, which are never opened.
const PICKLE: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

#[derive(Debug)]
pub enum ModelSource {
    Folder {
        dir: PathBuf,
        prediction_type: Option<PredictionType>,
    },
    SingleFile(Box<SingleFile>),
}

impl ModelSource {
    /// A diffusers folder (with `model_index.json`) or a single-file `.safetensors` checkpoint.
    /// Pickle checkpoints (`.ckpt`, `.pt`, `.bin`) are refused without being read.
    pub fn open(path: &Path, opts: &SourceOptions) -> Result<Self> {
        if path.is_dir() {
            if !path.join("model_index.json").is_file() {
                return Err(SdError::config(
                    path,
                    "not a diffusers model folder: model_index.json is missing",
                ));
            }
            for c in COMPONENTS {
                if !path.join(c).is_dir() {
                    return Err(SdError::config(
                        path,
                        format!("the `{c}/` sub-folder of the model is missing"),
                    ));
                }
            }
            if let Some(dir) = &opts.config_dir {
                return Err(SdError::config(
                    dir,
                    "a config folder is only used with a single-file checkpoint, not with a diffusers folder",
                ));
            }
            return Ok(Self::Folder {
                dir: path.to_path_buf(),
                prediction_type: opts.prediction_type,
            });
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if PICKLE.contains(&ext.as_str()) {
            return Err(SdError::config(
                path,
                "a pickle checkpoint is never loaded (unpickling can run arbitrary code); \
                 convert it to .safetensors first (e.g. with a trusted tool in a sandbox) and pass that file",
            ));
        }
        if !path.exists() {
            return Err(SdError::config(
                path,
                "not found: expected a diffusers model folder (with model_index.json) or a \
                 single-file .safetensors checkpoint",
            ));
        }
        if ext != "safetensors" {
            return Err(SdError::config(
                path,
                "expected a diffusers model folder or a single-file .safetensors checkpoint",
            ));
        }
        Ok(Self::SingleFile(Box::new(SingleFile::open(path, opts)?)))
    }

    /// The folder or file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder { dir, .. } => dir,
            Self::SingleFile(f) => f.path(),
        }
    }

    pub fn tokenizer(&self) -> Result<ClipTokenizer> {
        match self {
            Self::Folder { dir, .. } => ClipTokenizer::from_dir(&dir.join("tokenizer")),
            Self::SingleFile(f) => f.tokenizer(),
        }
    }

    pub fn text_encoder_config(&self) -> Result<ClipTextConfig> {
        match self {
            Self::Folder { dir, .. } => {
                ClipTextConfig::from_file(&dir.join("text_encoder/config.json"))
            }
            Self::SingleFile(f) => f.text_encoder_config(),
        }
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        match self {
            Self::Folder { dir, .. } => UNetConfig::from_file(&dir.join("unet/config.json")),
            Self::SingleFile(f) => f.unet_config(),
        }
    }

    /// The side in pixels of the images the model draws by default
    /// ([`UNetConfig::default_image_side`]).
    pub fn default_image_side(&self) -> Result<usize> {
        Ok(self
            .unet_config()?
            .default_image_side(self.vae_config()?.downscale_factor()))
    }

    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        match self {
            Self::Folder { dir, .. } => {
                AutoencoderKLConfig::from_file(&dir.join("vae/config.json"))
            }
            Self::SingleFile(f) => f.vae_config(),
        }
    }

    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        match self {
            Self::Folder {
                dir,
                prediction_type,
            } => {
                let mut cfg =
                    SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
                if let Some(p) = prediction_type {
                    cfg.set("prediction_type", p.as_str());
                }
                Ok(cfg)
            }
            Self::SingleFile(f) => Ok(f.scheduler_config()),
        }
    }

    /// The weights file of a folder's component.
    fn folder_file(dir: &Path, component: &str) -> Result<PathBuf> {
        let (folder, stem) = FOLDERS
            .iter()
            .find(|(c, _)| *c == component)
            .ok_or_else(|| SdError::Invalid(format!("unknown model component `{component}`")))?;
        crate::io::weights::find_weights_file(&dir.join(folder), stem)
    }

    /// The number of values in `component`'s weights, read off the file header (no tensor
    /// data is read).
    pub fn parameter_count(&self, component: &str) -> Result<u64> {
        self.parameter_count_where(component, |_| true)
    }

    /// As [`Self::parameter_count`], only the tensors whose diffusers name `keep` selects.
    pub fn parameter_count_where(
        &self,
        component: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<u64> {
        match self {
            Self::Folder { dir, .. } => {
                let file = Self::folder_file(dir, component)?;
                let f = std::fs::File::open(&file).map_err(|e| SdError::io(&file, e))?;
                // SAFETY: the mapping is read-only and dropped before this function returns.
                let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| SdError::io(&file, e))?;
                let (_, header) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
                    SdError::Safetensors {
                        path: file.clone(),
                        message: e.to_string(),
                    }
                })?;
                Ok(header
                    .tensors()
                    .iter()
                    .filter(|(name, _)| keep(name))
                    .map(|(_, info)| info.shape.iter().map(|&d| d as u64).product::<u64>())
                    .sum())
            }
            Self::SingleFile(f) => Ok(f.parameter_count(component, keep)),
        }
    }

    /// Every tensor of `component` (`unet`, `vae`, `text_encoder`) under its diffusers name.
    pub fn load_tensors(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        self.load_tensors_where(component, dtype, device, |_| true)
    }

    /// As [`Self::load_tensors`], only the tensors whose diffusers name `keep` selects; the
    /// others are neither read nor converted.
    pub fn load_tensors_where(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
        keep: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, Tensor>> {
        match self {
            Self::Folder { dir, .. } => crate::io::weights::load_tensors_where(
                &Self::folder_file(dir, component)?,
                dtype,
                device,
                keep,
            ),
            Self::SingleFile(f) => f.component_tensors_where(component, dtype, device, keep),
        }
    }

    /// Builds a component from its weights with `patches` added; a folder's unpatched
    /// components are memory-mapped. Errors name the weights file.
    pub fn build<T>(
        &self,
        component: &str,
        dtype: DType,
        device: &Device,
        patches: &[Patch],
        build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T> {
        match self {
            Self::Folder { dir, .. } => {
                let file = Self::folder_file(dir, component)?;
                crate::io::patch::build_patched_file(
                    &file, component, dtype, device, patches, build,
                )
            }
            Self::SingleFile(f) => {
                // Patches are checked against, and added to, the f32 values of the file.
                let patched = patches.iter().any(|p| p.touches(component));
                let load_dtype = if patched { DType::F32 } else { dtype };
                let weights = f.component_tensors(component, load_dtype, &Device::Cpu)?;
                let vb = crate::io::patch::patched_var_builder(
                    component, weights, patches, dtype, device,
                )?;
                crate::io::weights::in_file(f.path(), build(vb))
            }
        }
    }
}
