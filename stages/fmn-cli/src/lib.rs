//! The command-line conventions every stage follows (fd / typst style): the shared option
//! groups ([`OutputArgs`], [`RunArgs`]), `--X` / `--no-X` switches ([`switch`]), parsing with
//! logging set up ([`parse`]), and one meaning of the exit codes ([`exit`]):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | an error: one message on stderr naming the file, tensor or key, and nothing half-written |
//! | 2 | a command-line (usage) error, reported by clap |
pub mod logging;
pub mod progress;

use clap::{Args, Parser};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--json`, `-q`, `-v`: what a stage prints.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print one JSON document on stdout (nothing else goes there).
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing on stderr but errors: no progress bars, no summary.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log progress details on stderr (`FMN_LOG=debug` for more).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

impl OutputArgs {
    /// Whether a human-readable summary goes to stderr (not with `-q`, nor with `--json`).
    pub fn summary(&self) -> bool {
        !self.quiet && !self.json
    }

    /// A finished run's result: `doc` on stdout with `--json`, else `summary` on stderr unless
    /// `-q`.
    pub fn report(&self, doc: &serde_json::Value, summary: impl FnOnce() -> String) {
        if self.json {
            println!("{doc}");
        } else if !self.quiet {
            eprintln!("{}", summary());
        }
    }

    /// A progress bar of `len` steps labelled `what`, hidden with `-q`.
    pub fn bar(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        progress::bar(len, what, self.quiet)
    }
}

/// `--checkpoint-every`, `--resume`: checkpoints of a long run, kept beside its output.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Run control")]
pub struct RunArgs {
    /// Save a checkpoint every N steps in OUT.ckpt/ beside the output (removed when the output
    /// is written); 0: never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in OUT.ckpt/, if there is one (with the same settings).
    #[arg(long)]
    pub resume: bool,
}

impl RunArgs {
    /// The checkpoint folder for the output `out`, when checkpoints are asked for.
    pub fn checkpoint_dir(&self, out: &Path) -> Option<PathBuf> {
        (self.checkpoint_every > 0 || self.resume).then(|| checkpoint_dir_for(out))
    }
}

/// `--ort-lib`: the stages that run ONNX models (fmn-segment, fmn-eval's `onnx:` judges).
#[derive(Debug, Clone, Default, Args)]
pub struct OrtArgs {
    /// The ONNX Runtime shared library (default: $ORT_DYLIB_PATH).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "ONNX Runtime"
    )]
    pub ort_lib: Option<PathBuf>,
}

/// `--max-memory`: the budget of the pre-flight memory check in the stages that allocate by
/// request size (sampling, training, evaluation).
#[derive(Debug, Clone, Default, Args)]
pub struct MemoryArgs {
    /// Refuse a request whose estimated peak memory exceeds SIZE (e.g. 12G, 800M) instead
    /// of the memory available now [default: the available memory].
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = fmn_core::memory::parse_size,
        help_heading = "Memory"
    )]
    pub max_memory: Option<u64>,
}

/// A stage's settings: `--config FILE.yaml` (the keys of the stage's `configs/<stage>/*.yaml`)
/// and the flags `S` that override its keys (`fmn_core::merge_valid`).
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs<S: Args> {
    /// Settings from a YAML file (keys as in the stage's configs/*.yaml); the flags below
    /// override them.
    #[arg(long, value_name = "FILE.yaml")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: S,
}

/// `OUT.ckpt` beside the output `OUT`.
pub fn checkpoint_dir_for(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".ckpt");
    out.with_file_name(name)
}

/// A boolean setting from a `--X` / `--no-X` pair of flags (declared with
/// `overrides_with` each other, so the last one given wins): `None` when neither was given,
/// so that the config file's value (or the default) stands.
pub fn switch(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// A stage's parsed command line: it carries the shared output options.
pub trait StageArgs: Parser {
    fn output(&self) -> &OutputArgs;
}

/// Parses the command line (on a usage error clap prints it and exits with 2; `--help` and
/// `--version` exit with 0) and installs the stderr logger at the level `-v` asks for.
pub fn parse<T: StageArgs>() -> T {
    let args = T::parse();
    let output = args.output();
    logging::init(output.verbose, output.quiet);
    args
}

/// The process's exit code for a stage's result: the stage's own code, or 1 after printing
/// the error and its causes on one line.
pub fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
