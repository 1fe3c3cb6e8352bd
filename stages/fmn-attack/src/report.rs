//! `attack.json`: the attacks, their images and verdicts, and the attack success rates.
use crate::attack::AttackResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const REPORT_FILE: &str = "attack.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    pub fmn_version: String,
    pub model: String,
    /// The patches applied to the model (none: the attack is the baseline on the base model).
    pub patches: Vec<PatchRef>,
    pub baseline: bool,
    pub concept: String,
    pub judge: String,
    pub expect: BTreeMap<String, String>,
    /// The settings the attacks ran with.
    pub settings: serde_json::Value,
    /// Per attack; its files are under `NAME/` (the embedding, the images).
    pub attacks: Vec<AttackResult>,
    /// Share of all attack images judged the concept.
    pub asr: f64,
    /// The attack with the highest rate (the first of equals) and its rate.
    pub strongest: Strongest,
    /// The judge on the concept's own images (what an attack at best brings back); none
    /// without images.
    pub reference: Option<Reference>,
}

/// How many of the attacker's images of the concept the judge calls the concept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub images: usize,
    pub judged_concept: usize,
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchRef {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strongest {
    pub name: String,
    pub rate: f64,
}

/// `(asr, strongest)` of `attacks` (at least one).
pub fn rates(attacks: &[AttackResult]) -> (f64, Strongest) {
    let (hits, total) = attacks.iter().fold((0, 0), |(h, t), a| {
        (h + a.judged_concept, t + a.images.len())
    });
    let mut strongest = Strongest {
        name: String::new(),
        rate: -1.0,
    };
    for a in attacks {
        if a.rate > strongest.rate {
            strongest = Strongest {
                name: a.name.clone(),
                rate: a.rate,
            };
        }
    }
    (hits as f64 / total.max(1) as f64, strongest)
}
