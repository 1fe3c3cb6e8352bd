//! `fmn-eval merge`: combine the report folders of `--shard I/N` runs into one report.
use crate::items::Results;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

fn load(dir: &Path) -> Result<Results> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no results.json (is it an fmn-eval report folder?)",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: bad results", path.display()))
}

/// The merged results; the shards' images are copied into `staging/images/`.
pub fn merge(dirs: &[PathBuf], staging: &Path) -> Result<Results> {
    let mut all: Vec<(PathBuf, Results)> = Vec::new();
    for d in dirs {
        all.push((d.clone(), load(d)?));
    }
    let (first_dir, first) = &all[0];
    let suite_json = serde_json::to_string(&first.suite)?;
    let mut shards = Vec::new();
    let mut items = Vec::new();
    let mut attacks = Vec::new();
    for (dir, r) in &all {
        for (what, a, b) in [
            ("judge", &r.judge, &first.judge),
            ("before folder", &r.before, &first.before),
            ("after folder", &r.after, &first.after),
        ] {
            if a != b {
                bail!(
                    "cannot merge: {} has {what} {a} but {} has {b}",
                    dir.display(),
                    first_dir.display()
                );
            }
        }
        if r.judge_model != first.judge_model {
            bail!(
                "cannot merge: {} and {} were judged with different preset or model files \
                 (see judge_model in their metrics.json)",
                dir.display(),
                first_dir.display()
            );
        }
        if serde_json::to_string(&r.suite)? != suite_json {
            bail!(
                "cannot merge: {} and {} were evaluated with different suites",
                dir.display(),
                first_dir.display()
            );
        }
        for s in &r.shards {
            if shards.contains(s) {
                bail!("cannot merge: shard {s} appears twice ({})", dir.display());
            }
            shards.push(*s);
        }
        items.extend(r.items.iter().cloned());
        for a in &r.attacks {
            let (src, dst) = (dir.join(&a.image), staging.join(&a.image));
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
            attacks.push(a.clone());
        }
        let src = dir.join("images");
        let dst = staging.join("images");
        std::fs::create_dir_all(&dst)?;
        if src.is_dir() {
            for e in
                std::fs::read_dir(&src).with_context(|| format!("cannot read {}", src.display()))?
            {
                let e = e?;
                std::fs::copy(e.path(), dst.join(e.file_name()))
                    .with_context(|| format!("cannot copy {}", e.path().display()))?;
            }
        }
    }
    let n = shards[0].count;
    if let Some(s) = shards.iter().find(|s| s.count != n) {
        bail!(
            "cannot merge: shard {s} is not one of {n} like shard {}",
            shards[0]
        );
    }
    if let Some(missing) = (0..n).find(|i| !shards.iter().any(|s| s.index == *i)) {
        bail!("cannot merge: shard {missing}/{n} is missing");
    }
    shards.sort_by_key(|s| s.index);
    Ok(Results {
        fmn_version: fmn_core::VERSION.into(),
        suite: first.suite.clone(),
        judge: first.judge.clone(),
        judge_model: first.judge_model.clone(),
        before: first.before.clone(),
        after: first.after.clone(),
        shards,
        items,
        attacks,
    })
}
