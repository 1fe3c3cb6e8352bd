//! Attack results beside the before/after folders: `fmn-attack`'s `attack.json` (its images
//! re-judged here with the evaluation's judge and the concept's erased `expect`), the attack
//! success rate (ASR) per concept in `metrics.json` and the attack grid in `report.html`.
use crate::judge::Judge;
use crate::suite::Suite;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The part of `fmn-attack`'s `attack.json` read here (the file is fmn-attack's contract).
#[derive(Debug, Deserialize)]
struct AttackFile {
    concept: String,
    baseline: bool,
    attacks: Vec<AttackEntry>,
}

#[derive(Debug, Deserialize)]
struct AttackEntry {
    name: String,
    /// `words` marks the chance-level control (random vocabulary words), not an attack.
    #[serde(default)]
    method: String,
    images: Vec<AttackImageEntry>,
}

#[derive(Debug, Deserialize)]
struct AttackImageEntry {
    file: String,
    prompt: String,
}

/// One attack image, judged by the evaluation's judge (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackItem {
    pub concept: String,
    /// The attack folder it came from.
    pub source: String,
    /// Whether that folder attacked the base model (no patch).
    pub baseline: bool,
    pub attack: String,
    /// From the `words` control (random vocabulary words): the chance level, not an attack.
    #[serde(default)]
    pub control: bool,
    pub prompt: String,
    /// Whether the judge saw the concept (its erased prompts' `expect`): the attack succeeded.
    pub recovered: bool,
    pub verdict: String,
    /// The image, relative to the report folder.
    pub image: String,
}

/// Per concept in `metrics.json`: the share of attack images judged the concept, over every
/// attack, and the strongest attack's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackMetrics {
    pub asr: f64,
    pub images: usize,
    pub attacks: usize,
    pub strongest: String,
    pub strongest_rate: f64,
    pub baseline: bool,
    /// The share of the `words` control's images judged the concept (random vocabulary
    /// words: what an attack must beat); none without the control.
    #[serde(default)]
    pub chance: Option<f64>,
}

/// Reads the attack folder `dir`, judges its images (copied into `staging/attack-images/`)
/// against the erased `expect` of the suite's concept of the same name.
pub fn judge_attack(
    dir: &Path,
    suite: &Suite,
    judge: &dyn Judge,
    staging: &Path,
) -> Result<Vec<AttackItem>> {
    let path = dir.join("attack.json");
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: AttackFile = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not an fmn-attack report", path.display()))?;
    let Some(concept) = suite.concepts.iter().find(|c| c.name == file.concept) else {
        bail!(
            "{}: the attack is on concept {:?}, which the suite does not hold ({})",
            path.display(),
            file.concept,
            suite
                .concepts
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let Some(expect) = concept.erased.first().map(|p| &p.expect) else {
        bail!(
            "concept {:?} has no erased prompts: nothing says what a recovered image shows",
            concept.name
        );
    };
    let mut items = Vec::new();
    for a in &file.attacks {
        let rel_dir = format!(
            "attack-images/{}/{}",
            crate::output::safe_name(&concept.name),
            crate::output::safe_name(&a.name)
        );
        std::fs::create_dir_all(staging.join(&rel_dir))?;
        let mut images = Vec::new();
        for im in &a.images {
            let src = dir.join(&a.name).join(&im.file);
            let img = image::open(&src)
                .with_context(|| format!("cannot read the attack image {}", src.display()))?
                .to_rgb8();
            let stem = Path::new(&im.file)
                .file_stem()
                .map_or(String::new(), |s| s.to_string_lossy().into_owned());
            let rel = format!("{rel_dir}/{}.png", crate::output::safe_name(&stem));
            img.save(staging.join(&rel))
                .with_context(|| format!("cannot write {rel} for the report"))?;
            images.push((img, rel, im.prompt.clone()));
        }
        let pictures: Vec<image::RgbImage> = images.iter().map(|(i, _, _)| i.clone()).collect();
        let verdicts = judge.judge(&pictures)?;
        for ((_, rel, prompt), v) in images.into_iter().zip(verdicts) {
            items.push(AttackItem {
                concept: concept.name.clone(),
                source: dir.display().to_string(),
                baseline: file.baseline,
                attack: a.name.clone(),
                control: a.method == "words",
                prompt,
                recovered: v.matches(expect),
                verdict: v.description,
                image: rel,
            });
        }
    }
    Ok(items)
}

/// The attacks of `items`, each once, in the order they first appear.
pub fn attack_names<'a>(items: &[&'a AttackItem]) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for i in items {
        if !names.contains(&i.attack.as_str()) {
            names.push(&i.attack);
        }
    }
    names
}

/// The ASR of `concept`'s attack items (the control's left out, its rate the `chance`);
/// `None` without any attack item.
pub fn attack_metrics(concept: &str, items: &[AttackItem]) -> Option<AttackMetrics> {
    let (control, mine): (Vec<&AttackItem>, Vec<&AttackItem>) = items
        .iter()
        .filter(|i| i.concept == concept)
        .partition(|i| i.control);
    if mine.is_empty() {
        return None;
    }
    let share =
        |of: &[&AttackItem]| of.iter().filter(|i| i.recovered).count() as f64 / of.len() as f64;
    let names = attack_names(&mine);
    let rate = |name: &str| {
        let of: Vec<&AttackItem> = mine.iter().copied().filter(|i| i.attack == name).collect();
        share(&of)
    };
    let (strongest, strongest_rate) =
        names
            .iter()
            .map(|n| (n.to_string(), rate(n)))
            .fold(
                (String::new(), -1.0),
                |best, x| if x.1 > best.1 { x } else { best },
            );
    Some(AttackMetrics {
        asr: share(&mine),
        images: mine.len(),
        attacks: names.len(),
        strongest,
        strongest_rate,
        baseline: mine.iter().all(|i| i.baseline),
        chance: (!control.is_empty()).then(|| share(&control)),
    })
}
