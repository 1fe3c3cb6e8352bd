//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`): the path
//! given (`--ort-lib`), else `ORT_DYLIB_PATH`. One runtime per process: the first library
//! loaded stays.
use crate::error::{OnnxError, Result};
use crate::model::{Model, ModelInfo};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the ONNX Runtime shared library.
pub const ORT_ENV: &str = "ORT_DYLIB_PATH";

struct Loaded {
    library: PathBuf,
    env: Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// A loaded ONNX Runtime (one per process: the first library loaded stays).
#[derive(Clone, Copy)]
pub struct Runtime {
    loaded: &'static Loaded,
}

/// The library named by `explicit`, else by `ORT_DYLIB_PATH`.
pub fn library_path(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None => match std::env::var_os(ORT_ENV) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(OnnxError::RuntimeNotConfigured),
        },
    }
}

impl Runtime {
    /// Loads ONNX Runtime from `explicit`, else from `ORT_DYLIB_PATH`; once loaded, the same
    /// runtime is returned whatever is asked. A missing file, a file that is not ONNX Runtime,
    /// or a version older than 1.31 is an error saying how to get it.
    pub fn load(explicit: Option<&Path>) -> Result<Runtime> {
        let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = LOADED.get() {
            return Ok(Runtime { loaded });
        }
        let path = library_path(explicit)?;
        if !path.is_file() {
            return Err(OnnxError::RuntimeMissing { path });
        }
        let path = path.canonicalize().map_err(|source| OnnxError::Io {
            path: path.clone(),
            source,
        })?;
        let load_err = |message: String| OnnxError::RuntimeLoad {
            path: path.clone(),
            message,
        };
        let builder = ort::init_from(&path).map_err(|e| load_err(e.to_string()))?;
        let env = builder
            .with_name("fmn")
            .with_telemetry(false)
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        let loaded = LOADED.get_or_init(|| Loaded { library: path, env });
        tracing::info!("ONNX Runtime loaded from {}", loaded.library.display());
        Ok(Runtime { loaded })
    }

    /// The shared library in use.
    pub fn library(&self) -> &Path {
        &self.loaded.library
    }

    /// ONNX Runtime's build description (version, commit).
    pub fn build_info(&self) -> String {
        ort::info().to_string()
    }

    /// Opens the ONNX file `model`; `threads` 0 leaves ONNX Runtime's own choice.
    pub fn open(&self, model: &Path, threads: usize) -> Result<Model> {
        if !model.is_file() {
            return Err(OnnxError::ModelMissing {
                path: model.to_path_buf(),
            });
        }
        let load_err = |message: String| OnnxError::ModelLoad {
            path: model.to_path_buf(),
            message,
        };
        let mut builder = Session::builder(&self.loaded.env)?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| load_err(e.to_string()))?;
        }
        let session = builder
            .commit_from_file(model)
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Model::new(session, model.to_path_buf()))
    }

    /// The inputs and outputs of an ONNX model.
    pub fn inspect(&self, model: &Path) -> Result<ModelInfo> {
        Ok(self.open(model, 1)?.info().clone())
    }

    /// Runs a float model on one input and returns one output's values, with no preset (for
    /// checks and tests).
    pub fn run_raw(
        &self,
        model: &Path,
        input: &str,
        shape: &[usize],
        data: Vec<f32>,
        output: &str,
    ) -> Result<Vec<f32>> {
        let tensor = Tensor::from_array((shape.to_vec(), data))?;
        let (_, values) = self.open(model, 0)?.run(input, tensor, output)?;
        Ok(values)
    }
}
