//! Writing the trained toy model as a diffusers `StableDiffusionPipeline` folder.
use super::architecture;
use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use fmn_core::StagingDir;
use fmn_sd::io::sampling_defaults::SamplingDefaults;
use std::collections::HashMap;
use std::path::Path;

fn tensors(vars: &[(String, Var)], prefix: &str) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.as_tensor().detach()))
        .collect()
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    fmn_core::write_json_atomic(path, value)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `out` (replacing it whole, atomically) from the trained weights; `clip_tokenizer`
/// is the folder holding the CLIP `vocab.json` and `merges.txt` to ship with it.
#[allow(clippy::too_many_arguments)]
pub fn export_model(
    out: &Path,
    unet: &[(String, Var)],
    text_encoder: &[(String, Var)],
    vae: &[(String, Var)],
    scaling_factor: f64,
    scheduler_config: &serde_json::Value,
    sampling: &SamplingDefaults,
    clip_tokenizer: &Path,
    training_record: &serde_json::Value,
) -> Result<()> {
    let staging = StagingDir::new(out)?;
    let root = staging.path();
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    write_json(&root.join("model_index.json"), &architecture::model_index())?;
    write_json(&root.join("unet/config.json"), &architecture::unet_config())?;
    write_json(
        &root.join("vae/config.json"),
        &architecture::vae_config(scaling_factor),
    )?;
    write_json(
        &root.join("text_encoder/config.json"),
        &architecture::text_encoder_config(),
    )?;
    write_json(
        &root.join("scheduler/scheduler_config.json"),
        scheduler_config,
    )?;
    if *sampling != SamplingDefaults::default() {
        write_json(
            &root.join(fmn_sd::io::sampling_defaults::FILE_NAME),
            &serde_json::to_value(sampling)?,
        )?;
    }
    write_json(
        &root.join("tokenizer/tokenizer_config.json"),
        &architecture::tokenizer_config(),
    )?;
    write_json(
        &root.join("tokenizer/special_tokens_map.json"),
        &serde_json::json!({
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"
        }),
    )?;
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(clip_tokenizer.join(f), root.join("tokenizer").join(f))
            .with_context(|| format!("cannot copy {}", clip_tokenizer.join(f).display()))?;
    }
    fmn_sd::io::weights::save_safetensors_atomic(
        &root.join("unet/diffusion_pytorch_model.safetensors"),
        &tensors(unet, ""),
        None,
    )?;
    fmn_sd::io::weights::save_safetensors_atomic(
        &root.join("vae/diffusion_pytorch_model.safetensors"),
        &tensors(vae, ""),
        None,
    )?;
    // Released CLIP checkpoints (and transformers 4) name the weights under `text_model.`.
    fmn_sd::io::weights::save_safetensors_atomic(
        &root.join("text_encoder/model.safetensors"),
        &tensors(text_encoder, "text_model."),
        None,
    )?;
    write_json(&root.join("training.json"), training_record)?;
    std::fs::write(
        root.join("preserve.txt"),
        fmn_toy_world::caption::preserve_list(),
    )
    .context("cannot write preserve.txt")?;
    staging.commit_replace()?;
    Ok(())
}
