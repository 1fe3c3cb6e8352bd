//! Re-steering settings: a YAML file (keys as the original Forget-Me-Not's `attn.yaml` where
//! they mean the same) whose values CLI flags override.
use fmn_core::Validate;
use fmn_sd::train::scaffold::{AdamKeys, CommonSettings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What kind of concept a name stands for; it picks the prompt templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConceptKind {
    Object,
    Style,
    /// A person: the anchor is a generic person phrase, not nothing.
    Identity,
}

impl ConceptKind {
    pub const ALL: [ConceptKind; 3] = [Self::Object, Self::Style, Self::Identity];

    pub fn as_str(self) -> &'static str {
        match self {
            ConceptKind::Object => "object",
            ConceptKind::Style => "style",
            ConceptKind::Identity => "identity",
        }
    }

    /// How far past a non-sibling anchor the target lies unless `anchor_push` says otherwise:
    /// 1 where the phrase without the concept can still draw it ("a blue" drew circles on the
    /// toy model), 0 for a style, whose phrase without it draws the plain picture (at 1 the
    /// stripes patch changed one seed of other concepts on each seed set, at 0 none:
    /// BENCHMARKS.md#style-targets-at-the-anchor-2026-12-07).
    pub fn default_push(self) -> f64 {
        match self {
            ConceptKind::Object | ConceptKind::Identity => 1.0,
            ConceptKind::Style => 0.0,
        }
    }

    /// What replaces the concept in its anchor prompts unless `anchor` says otherwise.
    pub fn default_anchor(self) -> &'static str {
        match self {
            ConceptKind::Object | ConceptKind::Style => "",
            ConceptKind::Identity => "a person",
        }
    }
}

/// One concept to forget (an entry of `multi_concept`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptSpec {
    /// The concept's name, as written in prompts ("bob", "stripes", "Elon Musk").
    pub name: String,
    pub kind: ConceptKind,
    /// Folder of the concept's images (needed when there are training steps).
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// Folder of masks (`NAME.png` per image `NAME.ext`) restricting the loss to the concept.
    #[serde(default)]
    pub masks: Option<PathBuf>,
    /// Learned tokens (`fmn-invert` output, or an AUTOMATIC1111 / diffusers embedding) that
    /// stand for the concept in the training prompts instead of its name.
    #[serde(default)]
    pub embedding: Option<PathBuf>,
    /// Learned tokens that bring the concept back on a patched model (`fmn-attack`'s
    /// embeddings, or the rounds of `harden`): forgotten with it, anchored like its name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adversarial: Vec<PathBuf>,
}

/// Which UNet weights change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ParamSet {
    /// Every UNet weight (the original's `only_optimize_ca: false`).
    All,
    /// The cross-attention (`attn2`) weights (`only_optimize_ca: true`).
    Attn2,
    /// Only the cross-attention key and value projections: the text side of attention.
    Attn2Kv,
}

/// What the training steps after the solve minimise (the `loss` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StepObjective {
    /// Forget-Me-Not's: the cross-attention on the concept's tokens.
    Attention,
    /// ESD's erasure with the anchor as its target (Gandikota et al. 2023): on the concept's
    /// images, the UNet's noise prediction under each concept prompt is moved onto the base
    /// model's under the anchor prompt, and on the base model's own images of preserved prompts
    /// (`prior.rs`) kept at the base model's. It changes how the UNet draws, not only what the
    /// words' keys and values are.
    Denoise,
}

/// The `pooler_positions` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolerChoice {
    All,
    First,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Unknown keys are refused by [`fmn_core::merge_valid`] (serde cannot deny them beside
/// `flatten`).
#[serde(default)]
pub struct ResteerConfig {
    pub multi_concept: Vec<ConceptSpec>,
    pub learning_rate: f64,
    pub max_train_steps: usize,
    /// What the steps minimise: `attention` (the original's) or `denoise`.
    pub loss: StepObjective,
    /// Images per concept per step.
    pub train_batch_size: usize,
    /// The original's shorthand: true means `params: attn2`, false `params: all`, unless
    /// `params` says otherwise.
    pub only_optimize_ca: Option<bool>,
    /// The trained weights; unset: from `only_optimize_ca`, else `attn2-kv`.
    pub params: Option<ParamSet>,
    /// Also count the end-of-text positions (all padding too, where the tokenizer pads with it).
    pub use_pooler: bool,
    /// With `use_pooler`: `all` end-of-text positions (the original) or the `first` only.
    pub pooler_positions: PoolerChoice,
    /// With learned tokens (`embedding`), train on prompts with the concept's name as well as
    /// on prompts with the tokens, so that the word is forgotten with them (the original uses
    /// the tokens only).
    pub also_name: bool,
    pub seed: u64,
    /// Timesteps are drawn uniformly from `[lo, hi)`.
    pub timesteps: [usize; 2],
    /// Training resolution in pixels (default: the model's sample size × VAE factor).
    pub resolution: Option<usize>,
    /// Whether anything is preserved (`--no-preserve`: false).
    pub preserve: bool,
    /// Preserve the model folder's `preserve.txt` if it has one, else the shipped lists
    /// (`configs/preserve/`, built in).
    pub builtin_preserve: bool,
    /// More list files (`configs/preserve/README.md` format).
    pub preserve_files: Vec<PathBuf>,
    /// More prompts, inline.
    pub preserve_prompts: Vec<String>,
    /// Weight of the term keeping the K/V projections of the preserved prompts unchanged (and
    /// with `loss: denoise`, of the one keeping their noise predictions).
    pub preserve_weight: f64,
    /// Weight of the term moving the K/V projections of the concept's prompts onto those of
    /// its anchor prompts (the same prompts with the concept replaced by `anchor`); with several
    /// concepts it weighs the mean of their terms; 0: off.
    pub anchor_weight: f64,
    /// What replaces the concept in its anchor prompts ("" drops it: "a photo of bob" →
    /// "a photo of"); unset: the kind's default ("" for objects and styles, "a person" for
    /// identities).
    pub anchor: Option<String>,
    /// How far past its anchor a concept's contexts are moved, in concept-to-anchor
    /// distances: the target is `A + anchor_push·(A − C)` (ESD's negative guidance, in K/V
    /// space). 0 stops at the anchor, which still draws the concept where the model's prior
    /// without it does (BENCHMARKS.md#re-steering-defaults); unset: the kind's
    /// ([`ConceptKind::default_push`]).
    pub anchor_push: Option<f64>,
    /// With `anchor` unset, an object's anchor is a sibling from the preserved list: of the
    /// words filling most of the concept's templates there ("triangle" for "a red square"),
    /// the one the solve alone brings the concept closest to (`sibling.rs`), its target at it
    /// (or `sibling_push` past it). Without one the kind's default anchor and `anchor_push` apply.
    pub sibling_anchor: bool,
    /// How far past a sibling anchor a concept's contexts are moved, as `anchor_push` past
    /// other anchors (the sibling is chosen at 0).
    pub sibling_push: f64,
    /// Start the steps from the exact minimiser of the anchor and preservation terms (a linear
    /// solve per run: `solve.rs`) instead of from the base weights; needs `anchor_weight` > 0
    /// and full (not LoRA) key/value deltas.
    pub solve_anchor: bool,
    /// Train rank-r factors (`up · down`) instead of full weights.
    pub lora_rank: Option<usize>,
    /// Prompt templates per kind; `{}` stands for the concept, and `[...]` around it (optional)
    /// marks the words the anchor prompt replaces with `anchor`.
    pub object_templates: Vec<String>,
    pub style_templates: Vec<String>,
    pub identity_templates: Vec<String>,
    /// The preserved prompts that name a concept are its prompts too (anchored to the same
    /// entry without it: "a yellow circle" → "a yellow"), beside the kind's templates: the
    /// words a model's captions put before a concept change its context rows, and templates
    /// alone left "a yellow circle" drawn (BENCHMARKS.md#re-steering-defaults).
    pub listed_concept_prompts: bool,
    pub adam_weight_decay: f64,
    #[serde(flatten)]
    pub adam: AdamKeys,
    /// `f16` or `f32`.
    pub delta_dtype: String,
    /// Rounds of attack-then-forget after the solve: each round learns tokens that bring each
    /// concept back on the patched model (textual inversion from its images, from its name
    /// and from noise), adds them to the concept's `adversarial` tokens and solves again.
    pub harden: usize,
    /// Inversion steps of each hardening attack.
    pub harden_steps: usize,
    /// With `loss: denoise`: attack steps per training step of an attacker inside the run
    /// (AdvUnlearn; `adversary.rs`): per concept, two learned tokens moved towards drawing
    /// its images on the UNet being trained, whose prompts are erased with the concept's.
    /// 0: none.
    pub adversary_steps: usize,
    /// The attacker's step: how far each attack step moves its rows, per value.
    pub adversary_lr: f64,
    /// With `loss: denoise`: preserved prompts the base model draws one image of at the start
    /// (spread evenly over the list), whose predictions the steps keep (`prior.rs`).
    pub prior_images: usize,
    /// Of the prior images, per concept, how many are of the preserved prompts that best
    /// explain the concept's images (the base model's denoising loss on them): the neighbours
    /// an erasure endangers most. 0: all spread over the list.
    pub prior_nearest: usize,
}

impl Default for ResteerConfig {
    /// fmn's method (BENCHMARKS.md#re-steering-defaults): only the cross-attention key/value
    /// projections change, solved in closed form from an anchor term (the concept's prompts
    /// onto the same prompts without it) and a preservation term over the model's or the
    /// shipped lists. No attention steps by default: after the solve they changed no judged
    /// image and did not lower the loss (BENCHMARKS.md#re-steering-defaults), so the solve
    /// alone is the default and needs no images. The original Forget-Me-Not settings are
    /// the `original` preset (`configs/resteer/original.yaml`).
    fn default() -> Self {
        Self {
            multi_concept: Vec::new(),
            learning_rate: 1e-3,
            max_train_steps: 0,
            loss: StepObjective::Attention,
            train_batch_size: 1,
            only_optimize_ca: None,
            params: None,
            use_pooler: true,
            pooler_positions: PoolerChoice::First,
            also_name: true,
            seed: 0,
            timesteps: [0, 1000],
            resolution: None,
            preserve: true,
            builtin_preserve: true,
            preserve_files: Vec::new(),
            preserve_prompts: Vec::new(),
            preserve_weight: 4.0,
            anchor_weight: 1.0,
            anchor: None,
            anchor_push: None,
            sibling_anchor: true,
            sibling_push: 0.0,
            solve_anchor: true,
            lora_rank: None,
            object_templates: vec!["a photo of {}".into(), "a picture of {}".into()],
            style_templates: vec![
                "a photo[ in the style of {}]".into(),
                "a picture[ in the style of {}]".into(),
            ],
            identity_templates: vec!["a photo of {}".into(), "a portrait of {}".into()],
            listed_concept_prompts: true,
            adam_weight_decay: 0.0,
            adam: AdamKeys {
                max_grad_norm: 1.0,
                ..AdamKeys::default()
            },
            delta_dtype: "f16".into(),
            harden: 0,
            harden_steps: 500,
            adversary_steps: 0,
            adversary_lr: 1e-3,
            prior_images: 16,
            prior_nearest: 0,
        }
    }
}

impl ResteerConfig {
    pub fn param_set(&self) -> ParamSet {
        match (self.params, self.only_optimize_ca) {
            (Some(p), _) => p,
            (None, Some(true)) => ParamSet::Attn2,
            (None, Some(false)) => ParamSet::All,
            (None, None) => ParamSet::Attn2Kv,
        }
    }

    pub fn pooler(&self) -> crate::prompts::PoolerPositions {
        use crate::prompts::PoolerPositions;
        match (self.use_pooler, self.pooler_positions) {
            (false, _) => PoolerPositions::None,
            (true, PoolerChoice::All) => PoolerPositions::All,
            (true, PoolerChoice::First) => PoolerPositions::First,
        }
    }

    pub fn templates(&self, kind: ConceptKind) -> &[String] {
        match kind {
            ConceptKind::Object => &self.object_templates,
            ConceptKind::Style => &self.style_templates,
            ConceptKind::Identity => &self.identity_templates,
        }
    }

    pub fn anchor_for(&self, kind: ConceptKind) -> &str {
        self.anchor.as_deref().unwrap_or(kind.default_anchor())
    }

    /// The push past the anchor for a concept of `kind`: `anchor_push` if set, else the kind's.
    pub fn push_for(&self, kind: ConceptKind) -> f64 {
        self.anchor_push.unwrap_or(kind.default_push())
    }
}

impl Validate for ResteerConfig {
    /// Checks what can be checked without the model; the message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.multi_concept.is_empty() {
            return Err("no concept given (--concept ... or `multi_concept` in the config)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.multi_concept {
            if !seen.insert((c.name.to_lowercase(), &c.embedding)) {
                return Err(format!(
                    "concept {:?} is listed twice in `multi_concept`",
                    c.name
                ));
            }
            if self.harden > 0 && c.images.is_none() {
                return Err(format!(
                    "concept {:?} has no images (--images or `images`): `harden` learns the tokens that bring it back from them",
                    c.name
                ));
            }
            if self.max_train_steps > 0 && c.images.is_none() {
                return Err(format!(
                    "concept {:?} has no images (--images or `images`); only a solve without steps (`max_train_steps: 0`) needs none",
                    c.name
                ));
            }
        }
        if self.harden > 0 && (!self.solve_anchor || self.anchor_weight <= 0.0) {
            return Err("`harden` forgets the learned tokens through the anchor solve: it needs `solve_anchor` and `anchor_weight` > 0".into());
        }
        if self.loss == StepObjective::Denoise && self.max_train_steps == 0 {
            return Err("`loss: denoise` is what the steps minimise, and `max_train_steps` is 0 (the solve alone)".into());
        }
        if self.loss == StepObjective::Denoise && self.anchor_weight <= 0.0 {
            return Err("`loss: denoise` moves the concept's predictions onto its anchor prompts', and `anchor_weight` is 0 (no anchor prompts)".into());
        }
        if self.adversary_steps > 0 && self.loss != StepObjective::Denoise {
            return Err(
                "`adversary_steps` attacks the denoising steps: it needs `loss: denoise`".into(),
            );
        }
        if self.prior_nearest > 0 && self.loss != StepObjective::Denoise {
            return Err(
                "`prior_nearest` chooses prior images of the denoising steps: it needs `loss: denoise`".into(),
            );
        }
        if self.prior_nearest > self.prior_images {
            return Err(format!(
                "`prior_nearest` ({}) is more than `prior_images` ({}): the nearest prompts are some of the prior images",
                self.prior_nearest, self.prior_images
            ));
        }
        if !(self.adversary_lr > 0.0 && self.adversary_lr.is_finite()) {
            return Err(format!(
                "`adversary_lr` must be positive, got {}",
                self.adversary_lr
            ));
        }
        if self.harden > 0 && self.harden_steps == 0 {
            return Err("`harden_steps` must be at least 1 when `harden` is on".into());
        }
        if self.max_train_steps == 0 && !self.solve_anchor {
            return Err(
                "`max_train_steps: 0` only solves, and `solve_anchor` is off: nothing would change"
                    .into(),
            );
        }
        CommonSettings {
            // 0 steps is the solve alone (checked above).
            steps: ("max_train_steps", self.max_train_steps.max(1)),
            batch: ("train_batch_size", self.train_batch_size),
            learning_rate: ("learning_rate", self.learning_rate),
            timesteps: self.timesteps,
            adam: &self.adam,
        }
        .check()?;
        for (key, w) in [
            ("preserve_weight", self.preserve_weight),
            ("anchor_weight", self.anchor_weight),
            ("anchor_push", self.anchor_push.unwrap_or(0.0)),
            ("sibling_push", self.sibling_push),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(format!("`{key}` must be zero or positive, got {w}"));
            }
        }
        if self.solve_anchor && self.anchor_weight <= 0.0 {
            return Err("`solve_anchor` solves the anchor term, and `anchor_weight` is 0".into());
        }
        if self.solve_anchor && self.lora_rank.is_some() {
            return Err(
                "`solve_anchor` sets full key/value deltas and cannot start LoRA factors (`lora_rank`)"
                    .into(),
            );
        }
        if self.lora_rank == Some(0) {
            return Err("`lora_rank` must be at least 1".into());
        }
        if !matches!(self.delta_dtype.as_str(), "f16" | "f32") {
            return Err(format!(
                "`delta_dtype` is f16 or f32, not {:?}",
                self.delta_dtype
            ));
        }
        for kind in ConceptKind::ALL {
            let t = self.templates(kind);
            if t.is_empty() {
                return Err(format!(
                    "`{}_templates` must be a non-empty list of prompts with exactly one {{}} each",
                    kind.as_str()
                ));
            }
            for template in t {
                crate::prompts::check_template(template)
                    .map_err(|e| format!("`{}_templates`: {e}", kind.as_str()))?;
            }
        }
        Ok(())
    }
}
