//! `fmn-patch`: inspect, merge, apply and LoRA-compress the weight patches re-steering writes
//! (format in [`fmn_sd::patch`]).
mod apply;
mod cli;
mod inspect;
pub mod lora;
mod merge;

pub use cli::{ApplyFormat, Cli, Command, LoraArgs, LoraDtype};

use anyhow::{Context, Result};
use fmn_sd::patch::Patch;
use std::path::Path;
use std::process::ExitCode;

pub fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Inspect { patch } => inspect::run(patch, cli.json),
        Command::Merge { patches, out } => merge::run(patches, out, cli.json),
        Command::Lora(args) => lora::run(args, cli.json),
        Command::Apply {
            patches,
            model,
            source,
            format,
            out,
        } => {
            let format = format.unwrap_or(if model.is_dir() {
                ApplyFormat::Diffusers
            } else {
                ApplyFormat::SingleFile
            });
            match (format, model.is_dir()) {
                (ApplyFormat::Diffusers, true) => apply::run(patches, model, out, cli.json),
                (ApplyFormat::SingleFile, false) => {
                    apply::run_single_file(patches, model, source, out, cli.json)
                }
                (ApplyFormat::SingleFile, true) => anyhow::bail!(
                    "--format single-file needs a single-file --model; {} is a diffusers folder \
                     (converting a folder to the original layout is not supported)",
                    model.display()
                ),
                (ApplyFormat::Diffusers, false) => anyhow::bail!(
                    "--format diffusers needs a diffusers folder as --model; {} is a file \
                     (use --format single-file to patch a single-file checkpoint)",
                    model.display()
                ),
            }
        }
    }
}

/// Loads a patch, naming the file in any error.
pub(crate) fn load_patch(path: &Path) -> Result<Patch> {
    Patch::load(path).with_context(|| format!("cannot load the patch {}", path.display()))
}

/// Refuses to write `out` over one of the inputs.
pub(crate) fn refuse_overwrite(out: &Path, inputs: &[impl AsRef<Path>]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = canon(out) {
        for i in inputs {
            if canon(i.as_ref()).as_ref() == Some(&o) {
                anyhow::bail!(
                    "the output {} is one of the inputs; inputs are never modified",
                    out.display()
                );
            }
        }
    }
    Ok(())
}
