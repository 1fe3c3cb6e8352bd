//! The `onnx:` judge's face kind on a tiny embedding fixture
//! (tests/fixtures/gen/make_onnx_face.py), against the embeddings and cosine similarities torch
//! and numpy compute for the same images; an end-to-end run of the binary. Needs ONNX Runtime:
//! `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` (scripts/test.sh does it).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use fmn_eval::judge::{l2_normalise, Judge, OnnxJudge, OnnxKind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const TOL: f64 = 1e-5;

fn fixture() -> PathBuf {
    common::repo_root().join("tests/fixtures/onnx-face")
}

fn reference() -> Value {
    common::read_json(&fixture().join("reference.json"))
}

fn images() -> Vec<image::RgbImage> {
    common::read_images(&fixture(), &["img0.png", "img1.png", "img2.png"])
}

fn load(preset: &str) -> OnnxJudge {
    common::require_ort();
    OnnxJudge::load(&fixture().join(preset)).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The largest absolute difference, asserting it is below `TOL`.
fn max_err(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}");
    let e = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(e < TOL, "{what}: {got:?} vs {want:?}");
    e
}

#[test]
fn embeddings_and_similarities_match_torch() {
    let r = reference();
    let judge = load("preset.yaml");
    assert_eq!(judge.kind(), OnnxKind::Face);
    let emb = judge.embeddings(&images()).unwrap();
    let mut e_emb = 0f64;
    for (i, e) in emb.iter().enumerate() {
        let want = floats(&r["embeddings"][i]);
        e_emb = e_emb.max(max_err(e, &want, &format!("embedding {i}")));
    }
    // Reference embeddings: computed at load, L2-normalised.
    let refs = judge.references().unwrap();
    let names: Vec<&str> = refs.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["alice", "bob"]);
    let mut e_ref = 0f64;
    for (name, embs) in &refs {
        let want = r["reference_embeddings"][*name].as_array().unwrap();
        assert_eq!(embs.len(), want.len(), "{name}");
        for (k, (g, w)) in embs.iter().zip(want).enumerate() {
            let w = floats(w);
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            let w: Vec<f64> = w.iter().map(|x| x / norm).collect();
            e_ref = e_ref.max(max_err(g, &w, &format!("{name} reference {k}")));
        }
    }
    let sims = judge.similarities(&images()).unwrap();
    let mut e_cos = 0f64;
    for (i, s) in sims.iter().enumerate() {
        let want = floats(&r["cosines"][i]);
        e_cos = e_cos.max(max_err(s, &want, &format!("cosines of image {i}")));
    }
    eprintln!(
        "face vs torch: max embedding error {e_emb:.2e}, max normalised reference error \
         {e_ref:.2e}, max cosine error {e_cos:.2e}"
    );
    let verdicts = judge.judge(&images()).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        let want = r["identity"][i].as_str().unwrap();
        assert_eq!(v.labels["identity"].as_deref(), Some(want), "image {i}");
    }
    // The stranger's best cosine is below the threshold; the others name the best match
    // although the other identity is above the threshold too.
    assert_eq!(r["identity"], serde_json::json!(["alice", "bob", "none"]));
    assert!(r["cosines"][0][1].as_f64().unwrap() >= r["threshold"].as_f64().unwrap());
    assert!(verdicts[2].description.starts_with("none (best"));
    let e = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    assert!(judge.check_expect(&e("identity", "bob")).is_ok());
    assert!(judge.check_expect(&e("identity", "none")).is_ok());
    assert!(judge
        .check_expect(&e("identity", "carol"))
        .unwrap_err()
        .contains("alice, bob, none"));
    assert!(judge
        .check_expect(&e("label", "alice"))
        .unwrap_err()
        .contains("it knows identity"));
    let not = judge.detections(&images()).unwrap_err().to_string();
    assert!(not.contains("is a face, not a detector"), "{not}");
}

#[test]
fn a_single_references_folder_is_one_identity_named_after_it() {
    let r = reference();
    let judge = load("preset-single.yaml");
    let refs = judge.references().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].0, "alice");
    let sims = judge.similarities(&images()).unwrap();
    let threshold = r["threshold"].as_f64().unwrap();
    for (i, (s, v)) in sims.iter().zip(judge.judge(&images()).unwrap()).enumerate() {
        let want = r["cosines"][i][0].as_f64().unwrap();
        max_err(s, &[want], &format!("image {i}"));
        let id = if want >= threshold { "alice" } else { "none" };
        assert_eq!(v.labels["identity"].as_deref(), Some(id), "image {i}");
    }
}

#[test]
fn normalising_keeps_the_direction_and_refuses_zero() {
    let v = l2_normalise(&[3.0, 4.0]).unwrap();
    assert_eq!(v, vec![0.6, 0.8]);
    assert!(l2_normalise(&[0.0, 0.0]).is_none());
    assert!(l2_normalise(&[f32::NAN, 1.0]).is_none());
}

#[test]
fn evaluates_folders_with_the_face_judge() {
    common::require_ort();
    let tmp = tempfile::tempdir().unwrap();
    let (erased, preserved) = ("a photo of alice", "a photo of bob");
    common::copied_sample_dir(
        &tmp.path().join("before"),
        &fixture(),
        &[
            (erased, &["img0.png", "refs/alice/ref1.png"]),
            (preserved, &["img1.png", "img1.png"]),
        ],
    );
    // After: one alice became the stranger, one bob became alice.
    common::copied_sample_dir(
        &tmp.path().join("after"),
        &fixture(),
        &[
            (erased, &["img2.png", "img0.png"]),
            (preserved, &["img0.png", "refs/bob/ref0.png"]),
        ],
    );
    std::fs::write(
        tmp.path().join("suite.yaml"),
        format!(
            "concepts:\n  - name: alice\n    erased: [{{prompt: {erased}, expect: {{identity: alice}}}}]\n    preserved: [{{prompt: {preserved}, expect: {{identity: bob}}}}]\n"
        ),
    )
    .unwrap();
    let judge = format!("onnx:{}", fixture().join("preset.yaml").display());
    let m = common::eval_json(tmp.path(), &judge);
    let c = &m["concepts"][0];
    assert_eq!(c["acc_e"], serde_json::json!({"before": 1.0, "after": 0.5}));
    assert_eq!(c["acc_s"], serde_json::json!({"before": 1.0, "after": 0.5}));
}
