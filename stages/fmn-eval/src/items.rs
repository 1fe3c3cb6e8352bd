//! Per-image results (`results.json`): what the metrics are computed from, and what `merge`
//! combines across shards.
use crate::suite::Group;
use fmn_core::Shard;
use serde::{Deserialize, Serialize};

/// One image pair, judged for one concept's prompt group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub concept: String,
    pub group: Group,
    pub prompt: String,
    pub seed: Option<u64>,
    pub image_index: usize,
    pub before: Side,
    pub after: Side,
    pub drift: Drift,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Whether the judge's verdict matches the prompt's `expect`.
    pub correct: bool,
    pub verdict: String,
    /// Share of cross-attention mass on the concept's tokens (when attention was saved and
    /// the prompt contains them).
    pub attention_share: Option<f64>,
    /// The image, relative to the report folder.
    pub image: String,
    /// The attention heat-map overlay, relative to the report folder.
    pub heatmap: Option<String>,
    /// CLIP score of the image with its prompt (CLIP judge only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub mean_abs_diff: f64,
    pub ssim: f64,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub fmn_version: String,
    pub suite: crate::suite::Suite,
    pub judge: String,
    /// The `onnx:` judge's preset and model files with their sha256s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<crate::judge::JudgeModel>,
    pub before: String,
    pub after: String,
    /// The shards these results cover (one, or all of a merge).
    pub shards: Vec<Shard>,
    pub items: Vec<Item>,
    /// Attack images (`--attack`), judged like the items.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacks: Vec<crate::attack::AttackItem>,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Erased => "erased",
            Group::Synonym => "synonyms",
            Group::Preserved => "preserved",
        }
    }
}
