//! The loss terms against hand-computed values, and the concept's token positions.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor};
use fmn_resteer::loss::{anchor_offsets, anchoring, attention_energy, preservation};
use fmn_resteer::prompts::{
    anchor_prompt, check_template, concept_prompt, entry_template, PoolerPositions,
};
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::models::probes::AttentionRecord;
use std::path::Path;

fn tokenizer() -> ClipTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/clip-tokenizer");
    ClipTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap()
}

#[test]
fn energy_sums_squared_probabilities_at_the_positions_with_mask_weights() {
    let dev = Device::Cpu;
    // One layer, batch 1, 1 head, a 2x2 grid (4 pixels), 3 tokens.
    let probs = Tensor::new(
        &[[[
            [0.5f32, 0.25, 0.25],
            [0.1, 0.6, 0.3],
            [0.2, 0.2, 0.6],
            [0.0, 1.0, 0.0],
        ]]],
        &dev,
    )
    .unwrap();
    let records = vec![AttentionRecord {
        path: "a.attn2".into(),
        height: 2,
        width: 2,
        probs,
    }];
    let pos = Tensor::new(&[1u32], &dev).unwrap();
    let e: f32 = attention_energy(&records, &pos, None)
        .unwrap()
        .to_scalar()
        .unwrap();
    // 0.25² + 0.6² + 0.2² + 1²
    assert!((e - 1.4625).abs() < 1e-6, "{e}");
    // A 4x4 latent mask whose top-left 2x2 block is fully inside and the rest half inside:
    // resized to the 2x2 grid: [1, 0.5, 0.5, 0.5].
    let mut m = vec![0.5f32; 16];
    for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        m[y * 4 + x] = 1.0;
    }
    let mask = Tensor::from_vec(m, (1, 1, 4, 4), &dev).unwrap();
    let e: f32 = attention_energy(&records, &pos, Some(&mask))
        .unwrap()
        .to_scalar()
        .unwrap();
    let want = 0.0625 + 0.5 * (0.36 + 0.04 + 1.0);
    assert!((e - want).abs() < 1e-6, "{e} vs {want}");
    // Two positions add up.
    let pos2 = Tensor::new(&[0u32, 2], &dev).unwrap();
    let e: f32 = attention_energy(&records, &pos2, None)
        .unwrap()
        .to_scalar()
        .unwrap();
    let want = 0.25 + 0.01 + 0.04 + 0.0 + 0.0625 + 0.09 + 0.36 + 0.0;
    assert!((e - want).abs() < 1e-6, "{e} vs {want}");
}

#[test]
fn preservation_is_the_mean_squared_projection_of_the_contexts() {
    let dev = Device::Cpu;
    let c = Tensor::new(&[[1f32, 0.0], [1.0, 2.0]], &dev).unwrap();
    let d = Tensor::new(&[[1f32, 1.0], [0.0, 3.0], [2.0, -1.0]], &dev).unwrap();
    // C Dᵀ = [[1, 0, 2], [3, 6, 0]] -> squares 1+0+4+9+36+0 = 50 per delta, over 2 rows.
    let gram = fmn_resteer::preserve::Gram::of(&c).unwrap().mean().unwrap();
    let p: f32 = preservation(&gram, &[d.clone(), d])
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((p - 50.0).abs() < 1e-5, "{p}");
}

#[test]
fn anchoring_is_the_mean_squared_gap_to_the_anchor_projections() {
    let dev = Device::Cpu;
    let c = Tensor::new(&[[1f32, 0.0], [1.0, 2.0]], &dev).unwrap();
    let a = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &dev).unwrap();
    let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
    let d = Tensor::new(&[[1f32, 1.0], [0.0, 3.0], [2.0, -1.0]], &dev).unwrap();
    // C (W + D)ᵀ = [[2, 0, 3], [4, 8, 3]] and A Wᵀ = [[0, 1, 1], [1, 0, 1]]: the gaps
    // [[2, -1, 2], [3, 8, 2]] square to 86, over 2 rows.
    let offsets = anchor_offsets(&c, &a, &[&w]).unwrap();
    let g: f32 = anchoring(&c, &[d], &offsets).unwrap().to_scalar().unwrap();
    assert!((g - 43.0).abs() < 1e-5, "{g}");
    // With no delta the concept's projections are the anchor's only if the contexts agree.
    let zero = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
    let same = anchor_offsets(&c, &c, &[&w]).unwrap();
    let g0: f32 = anchoring(&c, &[zero], &same).unwrap().to_scalar().unwrap();
    assert_eq!(g0, 0.0);
}

#[test]
fn anchor_prompts_replace_or_drop_the_concept() {
    assert_eq!(anchor_prompt("a photo of {}", ""), "a photo of");
    assert_eq!(
        anchor_prompt("a photo of {} in the style of stripes", "a circle"),
        "a photo of a circle in the style of stripes"
    );
    assert_eq!(
        anchor_prompt("a photo of a red square[ in the style of {}]", ""),
        "a photo of a red square"
    );
    let tok = tokenizer();
    let p = concept_prompt(
        &tok,
        "a red square[ in the style of {}]",
        "stripes",
        PoolerPositions::None,
    )
    .unwrap();
    assert_eq!(p.text, "a red square in the style of stripes");
    assert_eq!(p.positions, vec![8]);
    for bad in [
        "[a photo] of {}",
        "a photo of [{}",
        "a [photo [of {}]]",
        "a photo",
    ] {
        assert!(check_template(bad).is_err(), "{bad}");
    }
    assert!(check_template("a photo of [{}]").is_ok());
}

#[test]
fn concept_positions_and_pooler_positions() {
    let tok = tokenizer();
    // <start> a photo of bob <end> <pad = end> ...
    let p = concept_prompt(&tok, "a photo of {}", "bob", PoolerPositions::None).unwrap();
    assert_eq!(p.text, "a photo of bob");
    assert_eq!(p.positions, vec![4]);
    let with_pooler = concept_prompt(&tok, "a photo of {}", "bob", PoolerPositions::All).unwrap();
    // SD1 pads with the end-of-text token, so every position after the concept counts.
    assert_eq!(with_pooler.positions, (4..77).collect::<Vec<_>>());
    // Only the first end-of-text token: the one CLIP pools into.
    let first = concept_prompt(&tok, "a photo of {}", "bob", PoolerPositions::First).unwrap();
    assert_eq!(first.positions, vec![4, 5]);
    // A multi-token concept occupies consecutive positions.
    let multi = concept_prompt(
        &tok,
        "a photo in the style of {}",
        "van gogh",
        PoolerPositions::None,
    )
    .unwrap();
    let n = tok.tokenize("van gogh").unwrap().len();
    assert_eq!(multi.positions, (7..7 + n).collect::<Vec<_>>());
    // A template that pushes the concept past 77 tokens: refused, naming it.
    let long = format!("{} {{}}", "word ".repeat(80));
    let err = concept_prompt(&tok, &long, "bob", PoolerPositions::None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not appear"), "{err}");
}

#[test]
fn a_preserved_entry_naming_the_concept_becomes_its_template() {
    let style = ["a photo[ in the style of {}]".to_string()];
    let t = entry_template("a red circle in the style of stripes", "stripes", &style).unwrap();
    assert_eq!(t, "a red circle[ in the style of {}]");
    assert_eq!(anchor_prompt(&t, ""), "a red circle");
    // No bracket phrase in the entry: the concept's words are the slot.
    let t = entry_template("a yellow Circle", "circle", &style).unwrap();
    assert_eq!(t, "a yellow {}");
    assert_eq!(anchor_prompt(&t, ""), "a yellow");
    assert_eq!(
        entry_template("Elon Musk on stage", "elon musk", &[]).as_deref(),
        Some("{} on stage")
    );
    // Whole words only, and no template syntax in entries.
    assert_eq!(entry_template("a circles party", "circle", &[]), None);
    assert_eq!(entry_template("a semicircle", "circle", &[]), None);
    assert_eq!(entry_template("a [circle]", "circle", &[]), None);
    assert_eq!(entry_template("a red square", "circle", &style), None);
}
