//! `fmn-patch lora`: each matrix delta `D` (`[out, in]`, or a conv `[out, in, k, k]` read as
//! `[out, in·k·k]`) becomes LoRA factors from its truncated SVD `D ≈ U_r S_r V_rᵀ`:
//! `lora_up = U_r √S_r` (`[out, r]`, conv: `[out, r, 1, 1]`) and `lora_down = √S_r V_rᵀ`
//! (`[r, in]`, conv: `[r, in, k, k]`), with `alpha = r` so that the loaders' scale alpha/r is 1.
//! Keys follow kohya's layout that AUTOMATIC1111, ComfyUI and diffusers' `load_lora_weights`
//! read: `lora_unet_<module path with '.' → '_'>.{lora_down.weight, lora_up.weight, alpha}`,
//! and `lora_te_text_model_...` for the text encoder.
use crate::cli::{LoraArgs, LoraDtype};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use faer::Mat;
use fmn_cli::OutputArgs;
use fmn_sd::io::patch::Patch;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::process::ExitCode;

/// How the rank of each factorisation is chosen.
#[derive(Debug, Clone, Copy)]
pub enum RankChoice {
    /// The same rank everywhere (clamped to the smaller side of the matrix).
    Fixed(usize),
    /// The smallest rank whose leading squared singular values reach this fraction of the total.
    Energy(f64),
}

/// The LoRA factors of one delta.
#[derive(Debug)]
pub struct Factors {
    /// `[out, r]` (or `[out, r, 1, 1]` for a conv).
    pub up: Tensor,
    /// `[r, in]` (or `[r, in, k, k]`).
    pub down: Tensor,
    pub rank: usize,
    /// All singular values of the delta, largest first.
    pub singular_values: Vec<f64>,
}

/// The kohya module name of a patch key, or why the delta cannot be a LoRA.
pub fn lora_module_name(key: &str, shape: &[usize]) -> std::result::Result<String, String> {
    let Some(module) = key.strip_suffix(".weight") else {
        return Err("not a weight (biases and other parameters have no LoRA form)".into());
    };
    match shape.len() {
        2 | 4 => {}
        n => return Err(format!("a {n}-D tensor (norm or bias), not a matrix")),
    }
    if module.ends_with("_embedding") || module.ends_with(".embedding") {
        return Err("an embedding table, not a linear layer".into());
    }
    let (prefix, path) = if let Some(p) = module.strip_prefix("unet.") {
        ("lora_unet", p.to_string())
    } else if let Some(p) = module.strip_prefix("text_encoder.") {
        // transformers 5 files drop the `text_model.` that kohya names keep.
        let p = if p.starts_with("text_model.") {
            p.to_string()
        } else {
            format!("text_model.{p}")
        };
        ("lora_te", p)
    } else {
        return Err("only UNet and text-encoder deltas have a LoRA form".into());
    };
    Ok(format!("{prefix}_{}", path.replace('.', "_")))
}

/// The rank `choice` picks for singular values `s` (largest first).
pub fn pick_rank(s: &[f64], choice: RankChoice) -> usize {
    match choice {
        RankChoice::Fixed(r) => r.min(s.len()),
        RankChoice::Energy(e) => {
            let total: f64 = s.iter().map(|x| x * x).sum();
            if total == 0.0 {
                return 0;
            }
            let mut acc = 0.0;
            for (i, x) in s.iter().enumerate() {
                acc += x * x;
                if acc >= e * total {
                    return i + 1;
                }
            }
            s.len()
        }
    }
}

/// The LoRA factors (f32) of `delta` (2-D, or 4-D conv weight).
pub fn factorize(delta: &Tensor, choice: RankChoice) -> Result<Factors> {
    let dims = delta.dims().to_vec();
    let out = dims[0];
    let inner: usize = dims[1..].iter().product();
    let values = delta
        .to_dtype(DType::F64)?
        .reshape((out, inner))?
        .to_vec2::<f64>()?;
    let m = Mat::<f64>::from_fn(out, inner, |i, j| values[i][j]);
    let svd = m
        .thin_svd()
        .map_err(|e| anyhow::anyhow!("the SVD did not converge: {e:?}"))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let singular_values: Vec<f64> = (0..s.nrows()).map(|i| s[i]).collect();
    let r = pick_rank(&singular_values, choice);
    let sqrt_s: Vec<f64> = singular_values[..r].iter().map(|x| x.sqrt()).collect();
    let mut up = Vec::with_capacity(out * r);
    for i in 0..out {
        for k in 0..r {
            up.push((u[(i, k)] * sqrt_s[k]) as f32);
        }
    }
    let mut down = Vec::with_capacity(r * inner);
    for k in 0..r {
        for j in 0..inner {
            down.push((v[(j, k)] * sqrt_s[k]) as f32);
        }
    }
    let (up_shape, down_shape) = if dims.len() == 4 {
        (vec![out, r, 1, 1], vec![r, dims[1], dims[2], dims[3]])
    } else {
        (vec![out, r], vec![r, inner])
    };
    Ok(Factors {
        up: Tensor::from_vec(up, up_shape, &Device::Cpu)?,
        down: Tensor::from_vec(down, down_shape, &Device::Cpu)?,
        rank: r,
        singular_values,
    })
}

/// `‖up·down − delta‖_F / ‖delta‖_F` of the factors as stored (in `dtype`); 0 for a zero delta.
pub fn relative_error(f: &Factors, delta: &Tensor, dtype: DType) -> Result<f64> {
    let out = delta.dim(0)?;
    let d = delta.to_dtype(DType::F64)?.reshape((out, ()))?;
    let norm = d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let up =
        f.up.to_dtype(dtype)?
            .to_dtype(DType::F64)?
            .reshape((out, f.rank))?;
    let down = f
        .down
        .to_dtype(dtype)?
        .to_dtype(DType::F64)?
        .reshape((f.rank, ()))?;
    let err = if f.rank == 0 {
        norm
    } else {
        (up.matmul(&down)? - &d)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?
            .sqrt()
    };
    Ok(if norm == 0.0 { 0.0 } else { err / norm })
}

#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub key: String,
    pub lora_name: String,
    pub shape: Vec<usize>,
    pub rank: usize,
    pub relative_error: f64,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// What [`lora_tensors`] makes of a patch.
pub struct LoraOutput {
    /// The tensors of the LoRA file.
    pub tensors: HashMap<String, Tensor>,
    /// One per factorised delta.
    pub reports: Vec<TensorReport>,
    /// The deltas left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// The LoRA tensors of `patch`, a report per factorised tensor, and the deltas left out.
pub fn lora_tensors(patch: &Patch, choice: RankChoice, dtype: DType) -> Result<LoraOutput> {
    let mut tensors = HashMap::new();
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for (key, delta) in &patch.deltas {
        let name = match lora_module_name(key, delta.dims()) {
            Ok(n) => n,
            Err(reason) => {
                skipped.push(Skipped {
                    key: key.clone(),
                    reason,
                });
                continue;
            }
        };
        let f = factorize(delta, choice).with_context(|| format!("tensor `{key}`"))?;
        if f.rank == 0 {
            skipped.push(Skipped {
                key: key.clone(),
                reason: "the delta is zero".into(),
            });
            continue;
        }
        let relative_error = relative_error(&f, delta, dtype)?;
        let alpha = Tensor::new(f.rank as f32, &Device::Cpu)?.to_dtype(dtype)?;
        tensors.insert(format!("{name}.lora_up.weight"), f.up.to_dtype(dtype)?);
        tensors.insert(format!("{name}.lora_down.weight"), f.down.to_dtype(dtype)?);
        tensors.insert(format!("{name}.alpha"), alpha);
        reports.push(TensorReport {
            key: key.clone(),
            lora_name: name,
            shape: delta.dims().to_vec(),
            rank: f.rank,
            relative_error,
        });
    }
    Ok(LoraOutput {
        tensors,
        reports,
        skipped,
    })
}

pub fn run(args: &LoraArgs, output: &OutputArgs) -> Result<ExitCode> {
    let choice = match (args.rank, args.energy) {
        (Some(0), _) => bail!("--rank must be at least 1"),
        (Some(r), _) => RankChoice::Fixed(r),
        (None, Some(e)) if e > 0.0 && e <= 1.0 => RankChoice::Energy(e),
        (None, Some(e)) => bail!("--energy {e}: expected a fraction in (0, 1]"),
        (None, None) => bail!("give --rank R or --energy E"),
    };
    crate::refuse_overwrite(&args.out, &[&args.patch])?;
    let patch = crate::load_patch(&args.patch)?;
    let dtype = match args.dtype {
        Some(LoraDtype::F16) => DType::F16,
        Some(LoraDtype::F32) => DType::F32,
        None => patch.meta.delta_dtype,
    };
    let LoraOutput {
        tensors,
        reports,
        skipped,
    } = lora_tensors(&patch, choice, dtype)?;
    if !skipped.is_empty() {
        let list: Vec<String> = skipped
            .iter()
            .map(|s| format!("`{}` ({})", s.key, s.reason))
            .collect();
        if args.strict {
            bail!(
                "{}: {} deltas have no LoRA form: {}",
                args.patch.display(),
                skipped.len(),
                list.join(", ")
            );
        }
        for s in &list {
            tracing::warn!("left out of the LoRA: {s}");
        }
    }
    if tensors.is_empty() {
        bail!(
            "{}: no delta of this patch has a LoRA form",
            args.patch.display()
        );
    }
    let concepts = serde_json::to_string(&patch.meta.concepts)?;
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("fmn_patch_concepts".to_string(), concepts),
        (
            "fmn_patch_base_fingerprint".to_string(),
            patch.meta.base_fingerprint.clone(),
        ),
        ("fmn_version".to_string(), fmn_core::VERSION.to_string()),
    ]);
    fmn_sd::io::weights::save_safetensors_atomic(&args.out, &tensors, Some(metadata))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let size_bytes: usize = tensors
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum();
    if output.json {
        let summary = json!({
            "out": args.out.display().to_string(),
            "tensors": reports,
            "skipped": skipped,
            "size_bytes": size_bytes,
            "patch_size_bytes": patch.size_bytes(),
        });
        println!("{}", serde_json::to_string(&summary)?);
    } else if !output.quiet {
        for r in &reports {
            eprintln!(
                "{:<80} {:?} rank {:>4}  rel. error {:.3e}",
                r.key, r.shape, r.rank, r.relative_error
            );
        }
        eprintln!(
            "wrote {} LoRA modules to {} ({} bytes; the patch holds {} bytes)",
            reports.len(),
            args.out.display(),
            size_bytes,
            patch.size_bytes()
        );
    }
    Ok(ExitCode::SUCCESS)
}
