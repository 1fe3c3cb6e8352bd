//! Writing a report folder: results.json, metrics.json, charts/*.svg and report.html.
use crate::charts;
use crate::items::Results;
use crate::metrics::{self, ConceptMetrics};
use crate::report;
use anyhow::{Context, Result};
use fmn_core::Shard;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsFile {
    pub fmn_version: String,
    pub judge: String,
    /// The `onnx:` judge's preset and model files with their sha256s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<crate::judge::JudgeModel>,
    pub before: String,
    pub after: String,
    pub shards: Vec<Shard>,
    pub concepts: Vec<ConceptMetrics>,
}

/// Computes the metrics of `results` and writes every file of the report into `dir`.
pub fn write_report(dir: &Path, results: &Results) -> Result<MetricsFile> {
    let concepts: Vec<ConceptMetrics> = results
        .suite
        .concepts
        .iter()
        .map(|c| ConceptMetrics {
            attack: crate::attack::attack_metrics(&c.name, &results.attacks),
            ..metrics::concept_metrics(&c.name, &results.items)
        })
        .collect();
    let charts_dir = dir.join("charts");
    std::fs::create_dir_all(&charts_dir)?;
    let mut svgs = Vec::new();
    for m in &concepts {
        let svg = charts::accuracy_chart(m)?;
        std::fs::write(
            charts_dir.join(format!("{}.svg", safe_name(&m.concept))),
            &svg,
        )?;
        svgs.push(svg);
    }
    let file = MetricsFile {
        fmn_version: fmn_core::VERSION.into(),
        judge: results.judge.clone(),
        judge_model: results.judge_model.clone(),
        before: results.before.clone(),
        after: results.after.clone(),
        shards: results.shards.clone(),
        concepts,
    };
    fmn_core::write_json_atomic(&dir.join("results.json"), results)?;
    fmn_core::write_json_atomic(&dir.join("metrics.json"), &file)?;
    let html = report::render(dir, results, &file.concepts, &svgs)?;
    fmn_core::write_atomic(&dir.join("report.html"), |f| {
        std::io::Write::write_all(f, html.as_bytes())
    })
    .context("cannot write report.html")?;
    Ok(file)
}

/// A concept name as a file name.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
