//! `fmn-eval`: how well a model forgot a concept. Judges the images of two `fmn-sample`
//! folders (before and after editing, same prompts and seeds) against a suite of prompts per
//! concept — the prompts that name it, synonyms, and neighbours to preserve — and reports
//! accuracies, MACE's harmonic scores, drift and cross-attention shares (`metrics.json`,
//! `report.html`).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod attack;
pub mod attention;
pub mod charts;
pub mod cli;
pub mod drift;
pub mod eval;
pub mod items;
pub use fmn_judge as judge;
pub mod judge_images;
pub mod merge;
pub mod metrics;
pub mod output;
pub mod preflight;
pub mod report;
pub mod samples;
pub mod suite;

pub use cli::Cli;

use anyhow::{Context, Result};
use fmn_core::StagingDir;
use std::path::Path;
use std::process::ExitCode;

pub fn execute(cli: &Cli) -> Result<ExitCode> {
    if let Some(lib) = &cli.ort.ort_lib {
        // The process's one ONNX Runtime, which the onnx judge uses.
        fmn_onnx::Runtime::load(Some(lib))?;
    }
    let (results, staging, out) = match &cli.command {
        Some(cli::Command::Judge(j)) => return judge_images::run(j, &cli.output),
        Some(cli::Command::Merge(m)) => {
            let staging = StagingDir::new(&m.out)
                .with_context(|| format!("cannot create {}", m.out.display()))?;
            let results = merge::merge(&m.shards, staging.path())?;
            (results, staging, m.out.clone())
        }
        None => {
            let settings = cli.eval.settings()?;
            let staging = StagingDir::new(&settings.out)
                .with_context(|| format!("cannot create {}", settings.out.display()))?;
            let results = eval::evaluate(&settings, staging.path(), cli.output.quiet)?;
            (results, staging, settings.out.clone())
        }
    };
    let metrics = output::write_report(staging.path(), &results)?;
    staging
        .commit_replace()
        .with_context(|| format!("cannot move the report into {}", out.display()))?;
    if cli.output.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
    } else if !cli.output.quiet {
        for m in &metrics.concepts {
            println!("{}", metrics::summary_line(m));
        }
        eprintln!("report: {}", Path::new(&out).join("report.html").display());
    }
    Ok(ExitCode::SUCCESS)
}
