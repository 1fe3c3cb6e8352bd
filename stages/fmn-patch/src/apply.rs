//! `fmn-patch apply`: a full diffusers folder with patches added to its weights. Everything
//! is copied into a staging folder beside the output, the patched components' weights files
//! rewritten there (same names, same dtypes), and the folder renamed into place at the end.
use anyhow::{bail, Context, Result};
use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use fmn_cli::OutputArgs;
use fmn_core::StagingDir;
use fmn_sd::io::patch::{apply_to_component, check_components, Patch, COMPONENTS};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The record of what was applied, written into the output folder.
pub const RECORD: &str = "fmn_patches.json";

pub fn run(inputs: &[PathBuf], model: &Path, out: &Path, output: &OutputArgs) -> Result<ExitCode> {
    if !model.join("model_index.json").is_file() {
        bail!(
            "{}: not a diffusers model folder (model_index.json is missing)",
            model.display()
        );
    }
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(model), std::fs::canonicalize(out)) {
        if a == b || a.starts_with(&b) || b.starts_with(&a) {
            bail!(
                "the output {} overlaps the model folder {}; inputs are never modified",
                out.display(),
                model.display()
            );
        }
    }
    let patches = inputs
        .iter()
        .map(|p| crate::load_patch(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    check_components(&patches).with_context(|| format!("patches {}", names.join(", ")))?;

    let staging =
        StagingDir::new(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut rewritten: Vec<(PathBuf, &str)> = Vec::new();
    let mut summary = Vec::new();
    for (component, folder, stem) in COMPONENTS {
        if !patches.iter().any(|p| p.touches(component)) {
            continue;
        }
        let file = fmn_sd::io::weights::find_weights_file(&model.join(folder), stem)?;
        let rel = file.strip_prefix(model).unwrap_or(&file).to_path_buf();
        let n = patch_file(&file, &staging.path().join(&rel), component, &patches)
            .with_context(|| format!("cannot apply {} to {}", names.join(", "), model.display()))?;
        summary
            .push(json!({"component": component, "file": rel.display().to_string(), "tensors": n}));
        rewritten.push((rel, stem));
    }
    copy_tree(model, staging.path(), Path::new(""), &rewritten)?;
    let mut record = applied_record(model, inputs, &patches);
    record["patched"] = json!(summary);
    fmn_core::write_json_atomic(&staging.path().join(RECORD), &record)?;
    let out = staging
        .commit_replace()
        .with_context(|| format!("cannot move the patched model into {}", out.display()))?;
    if output.json {
        println!("{}", serde_json::to_string(&record)?);
    } else if !output.quiet {
        for s in &summary {
            eprintln!("{}: {} tensors patched", s["file"], s["tensors"]);
        }
        eprintln!("wrote the patched model to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `fmn-patch apply --format single-file`: the single-file checkpoint `model` with `inputs`
/// added, written to the file `out` in the same layout and dtypes; every other tensor is copied
/// unchanged. The record of what was applied goes into the file's metadata (`fmn_patches`).
pub fn run_single_file(
    inputs: &[PathBuf],
    model_args: &fmn_sd_args::ModelArgs,
    out: &Path,
    output: &OutputArgs,
) -> Result<ExitCode> {
    let model = &model_args.path();
    crate::refuse_overwrite(out, &[model])?;
    let patches = inputs
        .iter()
        .map(|p| crate::load_patch(p))
        .collect::<Result<Vec<_>>>()?;
    let file = match model_args.open()? {
        fmn_sd::io::source::ModelSource::SingleFile(f) => f,
        fmn_sd::io::source::ModelSource::Folder { .. } => {
            bail!(
                "{} is a diffusers folder, not a single file",
                model.display()
            )
        }
    };
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let record = applied_record(model, inputs, &patches);
    let metadata = std::collections::BTreeMap::from([(
        "fmn_patches".to_string(),
        serde_json::to_string(&record)?,
    )]);
    let n = file
        .write_patched(out, &patches, &metadata)
        .with_context(|| format!("cannot apply {} to {}", names.join(", "), model.display()))?;
    if output.json {
        let mut record = record;
        record["tensors_rewritten"] = json!(n);
        record["out"] = json!(out.display().to_string());
        println!("{}", serde_json::to_string(&record)?);
    } else if !output.quiet {
        eprintln!(
            "{n} checkpoint tensors patched; wrote {} (original single-file layout)",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What was applied to what: fmn version, base model, and per patch its file, concepts, base
/// fingerprint and settings.
fn applied_record(model: &Path, inputs: &[PathBuf], patches: &[Patch]) -> serde_json::Value {
    json!({
        "fmn_version": fmn_core::VERSION,
        "base_model": model.display().to_string(),
        "patches": inputs.iter().zip(patches).map(|(path, p)| json!({
            "file": path.display().to_string(),
            "concepts": p.meta.concepts,
            "base_fingerprint": p.meta.base_fingerprint,
            "settings": p.meta.settings,
        })).collect::<Vec<_>>(),
    })
}

/// Rewrites the weights file `src` to `dst` with `patches` added to `component`'s tensors,
/// keeping every tensor's dtype and the file's metadata.
fn patch_file(src: &Path, dst: &Path, component: &str, patches: &[Patch]) -> Result<usize> {
    fmn_sd::io::weights::validate_safetensors(src)?;
    // SAFETY: the base model is read-only input; its files are not modified while mapped.
    let st = unsafe { MmapedSafetensors::new(src) }
        .with_context(|| format!("cannot read {}", src.display()))?;
    let metadata = fmn_sd::io::weights::read_metadata(src)?;
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    let mut dtypes: HashMap<String, DType> = HashMap::new();
    for (name, _) in st.tensors() {
        let t = st
            .load(&name, &Device::Cpu)
            .with_context(|| format!("{}: cannot read tensor `{name}`", src.display()))?;
        dtypes.insert(name.clone(), t.dtype());
        weights.insert(name, t);
    }
    let n = apply_to_component(component, &mut weights, patches)?;
    let weights = weights
        .into_iter()
        .map(|(k, t)| {
            let dtype = dtypes[&k];
            Ok((k, t.to_dtype(dtype)?))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    fmn_sd::io::weights::save_safetensors_atomic(dst, &weights, metadata)
        .with_context(|| format!("cannot write {}", dst.display()))?;
    Ok(n)
}

/// Copies `src/rel` into `dst/rel` recursively, leaving out the rewritten weights files and the
/// other weight files of their components (variants the patch was not checked against).
fn copy_tree(src: &Path, dst: &Path, rel: &Path, rewritten: &[(PathBuf, &str)]) -> Result<()> {
    let dir = src.join(rel);
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let rel_child = rel.join(entry.file_name());
        let from = entry.path();
        let to = dst.join(&rel_child);
        if from.is_dir() {
            std::fs::create_dir_all(&to)
                .with_context(|| format!("cannot create {}", to.display()))?;
            copy_tree(src, dst, &rel_child, rewritten)?;
            continue;
        }
        let skip = rewritten.iter().any(|(file, stem)| {
            let name = entry.file_name().to_string_lossy().into_owned();
            rel_child == *file
                || (file.parent() == rel_child.parent()
                    && name.starts_with(&format!("{stem}."))
                    && (name.ends_with(".safetensors") || name.ends_with(".bin")))
        });
        if skip {
            if !rewritten.iter().any(|(file, _)| rel_child == *file) {
                tracing::warn!(
                    "{} left out of the output (another weights variant of a patched component)",
                    rel_child.display()
                );
            }
            continue;
        }
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}
