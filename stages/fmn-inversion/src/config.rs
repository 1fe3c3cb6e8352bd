//! Inversion settings: a YAML file (keys as the original Forget-Me-Not's `ti.yaml` where they
//! mean the same) whose values CLI flags override.
use fmn_core::Validate;
use fmn_sd::train::scaffold::{AdamKeys, CommonSettings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What kind of concept the images show; it picks the prompt templates (`use_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Object,
    Style,
}

/// A list written either as YAML list or as one string separated by `|` (the original's form,
/// `<s1>|<s2>`) or spaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenList {
    Joined(String),
    List(Vec<String>),
}

impl TokenList {
    pub fn items(&self) -> Vec<String> {
        match self {
            TokenList::List(v) => v.iter().map(|s| s.trim().to_string()).collect(),
            TokenList::Joined(s) => split_tokens(s),
        }
    }
}

impl Default for TokenList {
    fn default() -> Self {
        TokenList::List(Vec::new())
    }
}

/// `<s1>|<s2>`, `<s1> <s2>` or `<s1>, <s2>` -> the tokens.
pub fn split_tokens(s: &str) -> Vec<String> {
    s.split(|c: char| c == '|' || c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Unknown keys are refused by [`fmn_core::merge_valid`] (serde cannot deny them beside
/// `flatten`).
#[serde(default)]
pub struct InvertConfig {
    /// Folder of the concept's images (`instance_data_dir`).
    pub instance_data_dir: Option<PathBuf>,
    /// Folder of masks (`NAME.png` per image): the loss is weighted toward the concept.
    pub mask_dir: Option<PathBuf>,
    pub use_template: Kind,
    /// The new tokens, e.g. `<s1>|<s2>`.
    pub placeholder_tokens: TokenList,
    /// One initialiser per token, or one for all: a word (one token), `<rand-σ>` or `<zero>`.
    pub initializer_tokens: TokenList,
    pub learning_rate_ti: f64,
    pub max_train_steps_ti: usize,
    pub train_batch_size: usize,
    pub weight_decay_ti: f64,
    /// After each step, pull each token's norm toward `ti_norm_target` by `min(1, 100·lr)`.
    pub clip_ti_decay: bool,
    pub ti_norm_target: f64,
    pub seed: u64,
    /// Training resolution in pixels (default: the model's sample size × VAE factor).
    pub resolution: Option<usize>,
    /// Random square crops of 80–100 % of the short side and horizontal flips.
    pub augment: bool,
    /// Timesteps are drawn uniformly from `[lo, hi)`.
    pub timesteps: [usize; 2],
    /// Added to the mask before normalising it to mean 1, so the background still counts a
    /// little (0.05 in the original).
    pub mask_floor: f64,
    /// Prompt templates per kind; `{}` stands for the tokens.
    pub object_templates: Vec<String>,
    pub style_templates: Vec<String>,
    /// No gradient clipping by default, as the original's inversion stage.
    #[serde(flatten)]
    pub adam: AdamKeys,
}

impl Default for InvertConfig {
    /// The original's inversion settings (`configs/invert/original.yaml` repeats them).
    fn default() -> Self {
        Self {
            instance_data_dir: None,
            mask_dir: None,
            use_template: Kind::Object,
            placeholder_tokens: TokenList::Joined("<s1>|<s2>".into()),
            initializer_tokens: TokenList::Joined("<rand-0.017>".into()),
            learning_rate_ti: 1e-3,
            max_train_steps_ti: 500,
            train_batch_size: 1,
            weight_decay_ti: 0.1,
            clip_ti_decay: true,
            ti_norm_target: 0.4,
            seed: 42,
            resolution: None,
            augment: true,
            timesteps: [0, 1000],
            mask_floor: 0.05,
            object_templates: vec!["a photo of {}".into()],
            style_templates: vec!["a photo in the style of {}".into()],
            adam: AdamKeys::default(),
        }
    }
}

impl InvertConfig {
    pub fn templates(&self) -> &[String] {
        match self.use_template {
            Kind::Object => &self.object_templates,
            Kind::Style => &self.style_templates,
        }
    }

    /// The tokens and one initialiser per token.
    pub fn tokens_and_initializers(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let tokens = self.placeholder_tokens.items();
        if tokens.is_empty() {
            return Err("no placeholder token given (--tokens or `placeholder_tokens`)".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(format!("placeholder token `{dup}` is given twice"));
        }
        let inits = self.initializer_tokens.items();
        let inits = match inits.len() {
            0 => vec!["<rand-0.017>".to_string(); tokens.len()],
            1 => vec![inits[0].clone(); tokens.len()],
            n if n == tokens.len() => inits,
            n => {
                return Err(format!(
                    "{} placeholder tokens but {n} initialisers (`initializer_tokens`): give one per token, or one for all",
                    tokens.len()
                ))
            }
        };
        Ok((tokens, inits))
    }
}

impl Validate for InvertConfig {
    /// Checks what can be checked without the model; the message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.instance_data_dir.is_none() {
            return Err("no images given (--images or `instance_data_dir`)".into());
        }
        self.tokens_and_initializers()?;
        CommonSettings {
            steps: ("max_train_steps_ti", self.max_train_steps_ti),
            batch: ("train_batch_size", self.train_batch_size),
            learning_rate: ("learning_rate_ti", self.learning_rate_ti),
            timesteps: self.timesteps,
            adam: &self.adam,
        }
        .check()?;
        if self.mask_floor.is_nan() || self.mask_floor <= 0.0 {
            return Err(format!(
                "`mask_floor` must be positive, got {}",
                self.mask_floor
            ));
        }
        let t = self.templates();
        if t.is_empty() || t.iter().any(|t| t.matches("{}").count() != 1) {
            return Err(
                "the templates (`object_templates` / `style_templates`) must be a non-empty list of prompts with exactly one {} each"
                    .into(),
            );
        }
        Ok(())
    }
}
