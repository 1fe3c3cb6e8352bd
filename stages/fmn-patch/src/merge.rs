//! `fmn-patch merge`.
use anyhow::{Context, Result};
use fmn_cli::OutputArgs;
use fmn_sd::io::patch::Patch;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn run(inputs: &[PathBuf], out: &Path, output: &OutputArgs) -> Result<ExitCode> {
    crate::refuse_overwrite(out, inputs)?;
    let patches = inputs
        .iter()
        .map(|p| crate::load_patch(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = Patch::merge(&patches).with_context(|| {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        format!("cannot merge {}", names.join(", "))
    })?;
    merged
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let summary = json!({
        "out": out.display().to_string(),
        "inputs": inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "concepts": merged.meta.concepts,
        "num_tensors": merged.deltas.len(),
        "size_bytes": merged.size_bytes(),
        "base_fingerprint": merged.meta.base_fingerprint,
    });
    if output.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !output.quiet {
        eprintln!(
            "merged {} patches ({}) into {}: {} tensors",
            inputs.len(),
            merged.describe(),
            out.display(),
            merged.deltas.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
