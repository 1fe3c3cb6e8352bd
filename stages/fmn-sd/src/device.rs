//! The compute device and dtype a stage's `--device` and `--dtype` flags name.
use crate::{Result, SdError};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N` -> the device; CUDA needs a build with the `cuda` feature and a GPU.
pub fn from_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            let ordinal = match d.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| SdError::Invalid(format!("--device {d}: expected cuda:N")))?,
            };
            Device::new_cuda(ordinal).map_err(|e| {
                SdError::Unsupported(format!(
                    "--device {d}: CUDA is not available ({e}); build with `--features cuda` on a machine with a GPU"
                ))
            })
        }
        d => Err(SdError::Invalid(format!(
            "--device {d}: expected cpu, cuda or cuda:N"
        ))),
    }
}

/// The compute dtype a stage's `--dtype` flag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDType {
    #[default]
    F32,
    /// Half precision: for GPUs (on the CPU every convolution is computed in f32 and cast).
    F16,
    Bf16,
}

impl ComputeDType {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ComputeDType::F32 => candle_core::DType::F32,
            ComputeDType::F16 => candle_core::DType::F16,
            ComputeDType::Bf16 => candle_core::DType::BF16,
        }
    }
}

impl std::str::FromStr for ComputeDType {
    type Err = SdError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(SdError::Invalid(format!(
                "dtype {other:?}: expected f32, f16 or bf16"
            ))),
        }
    }
}
