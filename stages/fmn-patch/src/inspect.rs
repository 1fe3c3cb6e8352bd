//! `fmn-patch inspect`.
use anyhow::Result;
use fmn_cli::OutputArgs;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path, output: &OutputArgs) -> Result<ExitCode> {
    let patch = crate::load_patch(path)?;
    let m = &patch.meta;
    let mut per_component: BTreeMap<&str, usize> = BTreeMap::new();
    for key in patch.deltas.keys() {
        *per_component
            .entry(key.split('.').next().unwrap_or(""))
            .or_default() += 1;
    }
    let tensors: Vec<_> = patch
        .deltas
        .iter()
        .map(|(k, t)| json!({"key": k, "shape": t.dims()}))
        .collect();
    let summary = json!({
        "file": path.display().to_string(),
        "format": fmn_sd::io::patch::FORMAT,
        "fmn_version": m.fmn_version,
        "concepts": m.concepts,
        "num_tensors": patch.deltas.len(),
        "tensors_per_component": per_component,
        "num_values": patch.deltas.values().map(|t| t.elem_count()).sum::<usize>(),
        "size_bytes": patch.size_bytes(),
        "delta_dtype": format!("{:?}", m.delta_dtype).to_lowercase(),
        "base_fingerprint": m.base_fingerprint,
        "settings": m.settings,
        "tensors": tensors,
    });
    if output.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !output.quiet {
        eprintln!("patch {} (made by fmn {})", path.display(), m.fmn_version);
        for c in &m.concepts {
            eprintln!("  concept: {} ({})", c.name, c.kind);
        }
        let comps: Vec<String> = per_component
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        eprintln!(
            "  tensors: {} ({}), {} bytes as {}",
            patch.deltas.len(),
            comps.join(", "),
            patch.size_bytes(),
            summary["delta_dtype"].as_str().unwrap_or("?")
        );
        eprintln!("  base fingerprint: {}", m.base_fingerprint);
        eprintln!("  settings: {}", m.settings);
    }
    Ok(ExitCode::SUCCESS)
}
