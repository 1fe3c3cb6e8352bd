//! `harden`: rounds of attack-then-forget. Each round learns, on the model patched with the
//! current solve, tokens that bring each concept back (textual inversion from its images; the
//! attack of Pham et al., ICLR 2024), which the next solve forgets with the concept's name.
use crate::config::{ConceptKind, ConceptSpec, ResteerConfig};
use crate::ResteerError;
use candle_core::Device;
use fmn_inversion::config::{InvertConfig, Kind, TokenList};
use fmn_sd::io::embedding::EmbeddingLayout;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_sd::train::scaffold::RunControl;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Learned tokens per hardening attack: the attack measured in #26 (2 tokens brought bob back).
const TOKENS: usize = 2;

/// One hardening attack's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct HardenAttack {
    pub round: usize,
    pub concept: String,
    /// `name` (the concept's own tokens) or `random`.
    pub init: String,
    pub tokens: Vec<String>,
    /// The inversion's mean denoising loss over its last steps on the patched model: how well
    /// the learned tokens draw the concept's images there (lower: more of it came back).
    pub final_loss: f64,
}

/// The initialisers of an attack: the concept name's own token ids (the last one repeated
/// when the name has fewer tokens), or noise.
fn initializers(
    model: &StableDiffusion,
    spec: &ConceptSpec,
    init: &str,
) -> Result<Vec<String>, ResteerError> {
    if init == "random" {
        return Ok(vec!["<rand-0.017>".into(); TOKENS]);
    }
    let ids = model.tokenizer.tokenize(&spec.name)?;
    let Some(&last) = ids.last() else {
        return Err(ResteerError::Input(format!(
            "concept {:?} has no tokens",
            spec.name
        )));
    };
    Ok((0..TOKENS)
        .map(|i| ids.get(i).copied().unwrap_or(last).to_string())
        .collect())
}

/// One round: on `patched`, for every concept of `cfg` and both initialisers, an inversion
/// from the concept's images; each embedding is written into `dir` and its path returned with
/// the concept's index.
pub fn attack_round(
    patched: &StableDiffusion,
    cfg: &ResteerConfig,
    round: usize,
    dir: &Path,
    device: &Device,
) -> Result<Vec<(usize, PathBuf, HardenAttack)>, ResteerError> {
    // The inversion's norm target: the model's median token norm (the original's 0.4 is SD
    // 1.x's).
    let norm_target = patched.text_encoder.median_token_norm()?;
    let mut out = Vec::new();
    for (ci, spec) in cfg.multi_concept.iter().enumerate() {
        for init in ["name", "random"] {
            let tokens: Vec<String> = (1..=TOKENS)
                .map(|i| format!("<fmn-harden-c{ci}-r{round}-{init}-{i}>"))
                .collect();
            let inv = InvertConfig {
                instance_data_dir: spec.images.clone(),
                mask_dir: spec.masks.clone(),
                use_template: match spec.kind {
                    ConceptKind::Style => Kind::Style,
                    ConceptKind::Object | ConceptKind::Identity => Kind::Object,
                },
                placeholder_tokens: TokenList::List(tokens.clone()),
                initializer_tokens: TokenList::List(initializers(patched, spec, init)?),
                max_train_steps_ti: cfg.harden_steps,
                seed: cfg.seed.wrapping_add(round as u64),
                ti_norm_target: norm_target,
                ..InvertConfig::default()
            };
            tracing::info!(
                "hardening round {round}: learning {TOKENS} tokens for {} from {init} ({} steps)",
                spec.name,
                cfg.harden_steps
            );
            let inverted = fmn_inversion::invert(patched, &inv, device, RunControl::silent())?;
            let path = dir.join(format!("c{ci}-r{round}-{init}.safetensors"));
            inverted.embedding.save(&path, EmbeddingLayout::Fmn)?;
            out.push((
                ci,
                path,
                HardenAttack {
                    round,
                    concept: spec.name.clone(),
                    init: init.into(),
                    tokens,
                    final_loss: inverted.report.late_mean_loss,
                },
            ));
        }
    }
    Ok(out)
}
