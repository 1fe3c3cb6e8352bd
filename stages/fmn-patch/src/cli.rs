//! The `fmn-patch` command line.
use crate::{apply, inspect, lora, merge};
use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use fmn_cli::{OutputArgs, StageArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inspect, merge, apply and LoRA-compress fmn weight patches (`fmn-patch/1` safetensors files).
#[derive(Debug, Parser)]
#[command(name = "fmn-patch", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl StageArgs for Cli {
    fn output(&self) -> &OutputArgs {
        &self.output
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Concepts, tensors, size, dtype, base fingerprint and settings of a patch.
    Inspect {
        /// The patch file.
        patch: PathBuf,
    },
    /// Combine patches into one (deltas of the same tensor summed, concept lists concatenated).
    Merge {
        /// The patches (at least two).
        #[arg(required = true, num_args = 2..)]
        patches: Vec<PathBuf>,
        /// The merged patch to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Compress a patch's matrix deltas into LoRA factors (kohya / AUTOMATIC1111 key layout).
    Lora(LoraArgs),
    /// Write the whole model with the patches added to its weights: a diffusers folder, or a
    /// single-file checkpoint in the original layout (AUTOMATIC1111 / ComfyUI load it).
    Apply {
        /// The patches, applied together.
        #[arg(required = true)]
        patches: Vec<PathBuf>,
        #[command(flatten)]
        model: fmn_sd_args::ModelArgs,
        /// What to write; default: the base model's own layout. `single-file` needs a
        /// single-file base.
        #[arg(long, value_enum)]
        format: Option<ApplyFormat>,
        /// The patched model folder or file to write (replaced if it exists).
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LoraArgs {
    /// The patch file.
    pub patch: PathBuf,
    /// The same rank for every tensor (clamped to the matrix's smaller side).
    #[arg(long, conflicts_with = "energy", required_unless_present = "energy")]
    pub rank: Option<usize>,
    /// Per tensor, the smallest rank keeping this fraction (0 < e ≤ 1) of the squared
    /// singular values.
    #[arg(long)]
    pub energy: Option<f64>,
    /// Dtype of the LoRA factors (default: the patch's delta dtype).
    #[arg(long)]
    pub dtype: Option<LoraDtype>,
    /// Fail instead of warning when a delta cannot be expressed as LoRA (biases, norms,
    /// embedding tables).
    #[arg(long)]
    pub strict: bool,
    /// The LoRA file to write.
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApplyFormat {
    /// A diffusers folder (from a diffusers base folder).
    Diffusers,
    /// One .safetensors file in the original CompVis layout (from a single-file base).
    SingleFile,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LoraDtype {
    F16,
    F32,
}

/// Parses the command line and runs the command.
pub fn run() -> Result<ExitCode> {
    execute(&fmn_cli::parse::<Cli>())
}

pub fn execute(cli: &Cli) -> Result<ExitCode> {
    let output = &cli.output;
    match &cli.command {
        Command::Inspect { patch } => inspect::run(patch, output),
        Command::Merge { patches, out } => {
            let _lock = fmn_core::OutputLock::acquire(out)?;
            merge::run(patches, out, output)
        }
        Command::Lora(args) => {
            let _lock = fmn_core::OutputLock::acquire(&args.out)?;
            lora::run(args, output)
        }
        Command::Apply {
            patches,
            model,
            format,
            out,
        } => {
            let path = model.path();
            let format = format.unwrap_or(if path.is_dir() {
                ApplyFormat::Diffusers
            } else {
                ApplyFormat::SingleFile
            });
            match (format, path.is_dir()) {
                (ApplyFormat::Diffusers, true) => apply::run(patches, &path, out, output),
                (ApplyFormat::SingleFile, false) => {
                    apply::run_single_file(patches, model, out, output)
                }
                (ApplyFormat::SingleFile, true) => anyhow::bail!(
                    "--format single-file needs a single-file --model; {} is a diffusers folder \
                     (converting a folder to the original layout is not supported)",
                    path.display()
                ),
                (ApplyFormat::Diffusers, false) => anyhow::bail!(
                    "--format diffusers needs a diffusers folder as --model; {} is a file \
                     (use --format single-file to patch a single-file checkpoint)",
                    path.display()
                ),
            }
        }
    }
}
