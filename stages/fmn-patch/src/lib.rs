//! `fmn-patch`: inspect, merge, apply and LoRA-compress the weight patches re-steering writes
//! (format in [`fmn_sd::io::patch`]).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
mod apply;
pub mod cli;
mod inspect;
pub mod lora;
mod merge;

pub use cli::{ApplyFormat, Cli, Command, LoraArgs, LoraDtype};

use anyhow::{Context, Result};
use fmn_sd::io::patch::Patch;
use std::path::Path;

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
