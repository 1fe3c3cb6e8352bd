//! The metrics of `metrics.json` (see the README): accuracies per prompt group, forgetting,
//! MACE's harmonic scores, drift and cross-attention shares, per concept.
use crate::items::Item;
use crate::suite::Group;
use serde::{Deserialize, Serialize};

/// `correct / total`, or `None` for no images.
pub fn accuracy(correct: usize, total: usize) -> Option<f64> {
    (total > 0).then(|| correct as f64 / total as f64)
}

/// The harmonic mean of `terms`; 0 when any term is 0 (its limit).
pub fn harmonic(terms: &[f64]) -> f64 {
    if terms.iter().any(|&t| t <= 0.0) {
        return 0.0;
    }
    terms.len() as f64 / terms.iter().map(|t| 1.0 / t).sum::<f64>()
}

/// MACE's overall harmonic score H_o = 3 / ((1−Acc_e)⁻¹ + Acc_s⁻¹ + (1−Acc_g)⁻¹).
pub fn h_overall(acc_e: f64, acc_s: f64, acc_g: f64) -> f64 {
    harmonic(&[1.0 - acc_e, acc_s, 1.0 - acc_g])
}

/// MACE's concept harmonic score H_c = 2 / ((1−Acc_e)⁻¹ + Acc_s⁻¹).
pub fn h_concept(acc_e: f64, acc_s: f64) -> f64 {
    harmonic(&[1.0 - acc_e, acc_s])
}

/// A value measured on the before and the after folder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: f64,
    pub after: f64,
}

/// Mean pixel difference (0..1) and mean SSIM between before and after images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    pub mean_abs_diff: f64,
    pub ssim: f64,
    pub images: usize,
}

/// Image counts per group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub erased: usize,
    pub synonym: usize,
    pub preserved: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptMetrics {
    pub concept: String,
    pub images: Counts,
    /// Accuracy on the prompts that name the concept.
    pub acc_e: Option<BeforeAfter>,
    /// Accuracy on synonyms and paraphrases.
    pub acc_g: Option<BeforeAfter>,
    /// Accuracy on the preserved neighbour prompts.
    pub acc_s: Option<BeforeAfter>,
    /// Acc_e before − Acc_e after.
    pub forgetting: Option<f64>,
    /// H_o; needs all three accuracies.
    pub h_o: Option<BeforeAfter>,
    /// H_c; needs Acc_e and Acc_s.
    pub h_c: Option<BeforeAfter>,
    /// Before vs. after on the preserved prompts (same seeds).
    pub drift: Option<DriftSummary>,
    /// Mean share of cross-attention mass on the concept's tokens, over the erased and
    /// synonym images whose prompts contain them.
    pub attention_share: Option<BeforeAfter>,
    /// Mean CLIP score of the erased prompts' images with their prompts (CLIP judge only).
    pub clip_score: Option<BeforeAfter>,
    /// The attack success rate of `--attack` folders on this concept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<crate::attack::AttackMetrics>,
}

fn group_accuracy(items: &[&Item], group: Group) -> Option<BeforeAfter> {
    let g: Vec<&&Item> = items.iter().filter(|i| i.group == group).collect();
    let before = accuracy(g.iter().filter(|i| i.before.correct).count(), g.len())?;
    let after = accuracy(g.iter().filter(|i| i.after.correct).count(), g.len())?;
    Some(BeforeAfter { before, after })
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// The metrics of `concept` from its items.
pub fn concept_metrics(concept: &str, all: &[Item]) -> ConceptMetrics {
    let items: Vec<&Item> = all.iter().filter(|i| i.concept == concept).collect();
    let count = |g| items.iter().filter(|i| i.group == g).count();
    let acc_e = group_accuracy(&items, Group::Erased);
    let acc_g = group_accuracy(&items, Group::Synonym);
    let acc_s = group_accuracy(&items, Group::Preserved);
    let both = |f: &dyn Fn(fn(&BeforeAfter) -> f64) -> Option<f64>| {
        Some(BeforeAfter {
            before: f(|x| x.before)?,
            after: f(|x| x.after)?,
        })
    };
    let h_o = both(&|side| Some(h_overall(side(&acc_e?), side(&acc_s?), side(&acc_g?))));
    let h_c = both(&|side| Some(h_concept(side(&acc_e?), side(&acc_s?))));
    let preserved: Vec<&&Item> = items
        .iter()
        .filter(|i| i.group == Group::Preserved)
        .collect();
    let drift = (!preserved.is_empty()).then(|| DriftSummary {
        mean_abs_diff: mean(preserved.iter().map(|i| i.drift.mean_abs_diff)).unwrap_or(0.0),
        ssim: mean(preserved.iter().map(|i| i.drift.ssim)).unwrap_or(0.0),
        images: preserved.len(),
    });
    let with_attention: Vec<(f64, f64)> = items
        .iter()
        .filter(|i| i.group != Group::Preserved)
        .filter_map(|i| Some((i.before.attention_share?, i.after.attention_share?)))
        .collect();
    let attention_share = (!with_attention.is_empty()).then(|| BeforeAfter {
        before: mean(with_attention.iter().map(|x| x.0)).unwrap_or(0.0),
        after: mean(with_attention.iter().map(|x| x.1)).unwrap_or(0.0),
    });
    let with_clip: Vec<(f64, f64)> = items
        .iter()
        .filter(|i| i.group == Group::Erased)
        .filter_map(|i| Some((i.before.clip_score?, i.after.clip_score?)))
        .collect();
    let clip_score = (!with_clip.is_empty()).then(|| BeforeAfter {
        before: mean(with_clip.iter().map(|x| x.0)).unwrap_or(0.0),
        after: mean(with_clip.iter().map(|x| x.1)).unwrap_or(0.0),
    });
    ConceptMetrics {
        concept: concept.to_string(),
        images: Counts {
            erased: count(Group::Erased),
            synonym: count(Group::Synonym),
            preserved: count(Group::Preserved),
        },
        forgetting: acc_e.map(|a| a.before - a.after),
        acc_e,
        acc_g,
        acc_s,
        h_o,
        h_c,
        drift,
        attention_share,
        clip_score,
        attack: None,
    }
}

fn fmt_opt(x: Option<BeforeAfter>) -> String {
    match x {
        Some(v) => format!("{:.2} -> {:.2}", v.before, v.after),
        None => "n/a".into(),
    }
}

/// The one-line stdout summary of a concept.
pub fn summary_line(m: &ConceptMetrics) -> String {
    let mut s = format!(
        "{}: Acc_e {} (forgetting {}), Acc_g {}, Acc_s {}",
        m.concept,
        fmt_opt(m.acc_e),
        m.forgetting.map_or("n/a".into(), |f| format!("{f:.2}")),
        fmt_opt(m.acc_g),
        fmt_opt(m.acc_s),
    );
    if let Some(h) = m.h_o {
        s += &format!(", H_o {:.3}", h.after);
    }
    if let Some(h) = m.h_c {
        s += &format!(", H_c {:.3}", h.after);
    }
    if let Some(d) = m.drift {
        s += &format!(", drift MAD {:.4} SSIM {:.3}", d.mean_abs_diff, d.ssim);
    }
    if let Some(a) = m.attention_share {
        s += &format!(", attention {:.3} -> {:.3}", a.before, a.after);
    }
    if let Some(c) = m.clip_score {
        s += &format!(", CLIP score {:.1} -> {:.1}", c.before, c.after);
    }
    if let Some(a) = &m.attack {
        s += &format!(
            ", attack success {:.2} over {} images (strongest {} {:.2}{}){}",
            a.asr,
            a.images,
            a.strongest,
            a.strongest_rate,
            a.chance
                .map_or(String::new(), |c| format!("; random words {c:.2}")),
            if a.baseline {
                ", on the base model"
            } else {
                ""
            }
        );
    }
    s
}
