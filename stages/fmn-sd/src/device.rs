//! The compute device a stage's `--device` flag names.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
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
