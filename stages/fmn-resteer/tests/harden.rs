//! Adversarial tokens (`--adversarial`, `adversarial:`) and `--harden N` on the tiny SD1
//! fixture with the default settings (the solve alone).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::embedding::{EmbeddingLayout, TokenEmbedding};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::StableDiffusion;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::moved;

fn model() -> PathBuf {
    fmn_testkit::fixtures().join("sd1-tiny")
}

fn resteer(cache: &Path, args: &[&str], out: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fmn-resteer"))
        .arg("--model")
        .arg(model())
        .arg("--cache-dir")
        .arg(cache)
        .args(["--quiet", "--json", "--concept", "bob", "--kind", "object"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

use fmn_testkit::json_of as ok;

/// A `tokens.len()`-token embedding holding the rows of `words` (one token each).
fn rows_embedding(sd: &StableDiffusion, tokens: &[&str], words: &[&str], path: &Path) {
    let rows: Vec<Tensor> = words
        .iter()
        .map(|w| {
            let ids = sd.tokenizer.tokenize(w).unwrap();
            assert_eq!(ids.len(), 1, "{w} is one token");
            sd.text_encoder
                .token_embedding_table()
                .get(ids[0] as usize)
                .unwrap()
        })
        .collect();
    TokenEmbedding::new(
        tokens.iter().map(|t| t.to_string()).collect(),
        Tensor::stack(&rows, 0).unwrap(),
        Default::default(),
    )
    .unwrap()
    .save(path, EmbeddingLayout::Fmn)
    .unwrap();
}

/// A JSON array of strings.
fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn max_delta_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (Patch::load(a).unwrap(), Patch::load(b).unwrap());
    assert_eq!(
        a.deltas.keys().collect::<Vec<_>>(),
        b.deltas.keys().collect::<Vec<_>>()
    );
    a.deltas
        .iter()
        .map(|(k, d)| fmn_testkit::max_abs_diff(d, &b.deltas[k]))
        .fold(0.0, f32::max)
}

#[test]
fn adversarial_tokens_are_forgotten_with_the_concept() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let sd = StableDiffusion::load(&model(), &Device::Cpu, DType::F32).unwrap();
    let f32_cfg = tmp.path().join("f32.yaml");
    std::fs::write(&f32_cfg, "delta_dtype: f32\n").unwrap();
    let f32_cfg = f32_cfg.to_str().unwrap();
    let plain = tmp.path().join("plain.safetensors");
    ok(&resteer(&cache, &["--config", f32_cfg], &plain));

    // Tokens holding bob's own row: their prompts' contexts are bob's, row for row, so the
    // concept's mean statistics and the patch are unchanged.
    let own = tmp.path().join("own.safetensors");
    rows_embedding(&sd, &["<a1>"], &["bob"], &own);
    let same = tmp.path().join("same.safetensors");
    let json = ok(&resteer(
        &cache,
        &["--config", f32_cfg, "--adversarial", own.to_str().unwrap()],
        &same,
    ));
    let prompts = strings(&json["concepts"][0]["prompts"]);
    assert!(prompts.contains(&"a photo of <a1>"), "{prompts:?}");
    assert!(prompts.contains(&"a photo of bob"), "{prompts:?}");
    let diff = max_delta_diff(&plain, &same);
    assert!(diff < 1e-6, "{diff}");

    // Tokens holding another word's row ("tree"): now "a photo of tree" is forgotten too.
    let other = tmp.path().join("other.safetensors");
    rows_embedding(&sd, &["<a1>", "<a2>"], &["tree", "tree"], &other);
    let both = tmp.path().join("both.safetensors");
    ok(&resteer(
        &cache,
        &[
            "--config",
            f32_cfg,
            "--adversarial",
            other.to_str().unwrap(),
        ],
        &both,
    ));
    let (before, after) = (
        moved(&sd, &Patch::load(&plain).unwrap(), "a photo of tree tree"),
        moved(&sd, &Patch::load(&both).unwrap(), "a photo of tree tree"),
    );
    assert!(after > 4.0 * before, "{before} -> {after}");
}

#[test]
fn harden_learns_tokens_on_the_patched_model_and_forgets_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (img, _) = fmn_testkit::write_training_images(tmp.path(), 2, 32);
    let img = img.to_str().unwrap();
    let plain = tmp.path().join("plain.safetensors");
    ok(&resteer(&cache, &["--images", img], &plain));
    let out = tmp.path().join("hard.safetensors");
    let json = ok(&resteer(
        &cache,
        &["--images", img, "--harden", "2", "--harden-steps", "3"],
        &out,
    ));
    let attacks = json["hardening"].as_array().unwrap();
    let rounds: Vec<(u64, &str)> = attacks
        .iter()
        .map(|a| (a["round"].as_u64().unwrap(), a["init"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rounds,
        [(1, "name"), (1, "random"), (2, "name"), (2, "random")]
    );
    // The last solve forgets all four attacks' tokens beside the name.
    let prompts = strings(&json["concepts"][0]["prompts"]);
    for a in attacks {
        let tokens = strings(&a["tokens"]);
        let prompt = format!("a photo of {}", tokens.join(" "));
        assert!(prompts.contains(&prompt.as_str()), "{prompt}: {prompts:?}");
        assert!(a["final_loss"].as_f64().unwrap().is_finite());
    }
    assert!(max_delta_diff(&plain, &out) > 0.0);
    assert!(!tmp.path().join("hard.safetensors.ckpt").exists());
    assert_eq!(
        Patch::load(&out).unwrap().meta.settings["harden"],
        serde_json::json!(2)
    );
}

#[test]
fn harden_needs_images_and_the_solve() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("p.safetensors");
    let res = resteer(&cache, &["--harden", "1"], &out);
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("has no images") && err.contains("harden"),
        "{err}"
    );
    let (img, _) = fmn_testkit::write_training_images(tmp.path(), 1, 32);
    let res = resteer(
        &cache,
        &[
            "--images",
            img.to_str().unwrap(),
            "--harden",
            "1",
            "--no-solve-anchor",
            "--steps",
            "1",
        ],
        &out,
    );
    let err = fmn_testkit::refused(&res, &out);
    assert!(
        err.contains("`harden`") && err.contains("solve_anchor"),
        "{err}"
    );
}
