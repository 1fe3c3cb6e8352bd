//! The `onnx:` judge on a tiny classifier fixture (tests/fixtures/gen/make_onnx_classifier.py),
//! against the probabilities torch computes for the same images. Needs ONNX Runtime:
//! `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` (scripts/test.sh does it).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use fmn_eval::judge::{Judge, OnnxJudge};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture() -> PathBuf {
    common::repo_root().join("tests/fixtures/onnx-classifier")
}

fn require_ort() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: these tests run ONNX Runtime. \
         Run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` first."
    );
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

fn images() -> Vec<image::RgbImage> {
    (0..4)
        .map(|i| {
            image::open(fixture().join(format!("img{i}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

#[test]
fn probabilities_match_torch() {
    require_ort();
    let judge = OnnxJudge::load(&fixture().join("preset.yaml")).unwrap();
    let probs = judge.probabilities(&images()).unwrap();
    let want = reference();
    for (i, row) in probs.iter().enumerate() {
        for (j, p) in row.iter().enumerate() {
            let w = want["probabilities"][i][j].as_f64().unwrap();
            assert!(
                (*p as f64 - w).abs() < 1e-5,
                "image {i} class {j}: {p} vs {w}"
            );
        }
    }
    let verdicts = judge.judge(&images()).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        let top = want["top"][i].as_str().unwrap();
        assert_eq!(v.labels["label"].as_deref(), Some(top));
        let group = (top == "tabby" || top == "tiger cat").then_some("cat");
        assert_eq!(v.labels["group"].as_deref(), group);
    }
    let e = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    assert!(judge.check_expect(&e("group", "cat")).is_ok());
    assert!(judge.check_expect(&e("label", "banana")).is_ok());
    assert!(judge
        .check_expect(&e("label", "zebra"))
        .unwrap_err()
        .contains("zebra"));
    assert!(judge
        .check_expect(&e("group", "bird"))
        .unwrap_err()
        .contains("cat, dog"));
    assert!(judge
        .check_expect(&e("object", "circle"))
        .unwrap_err()
        .contains("object"));
}

#[test]
fn evaluates_folders_with_the_onnx_judge() {
    require_ort();
    let tmp = tempfile::tempdir().unwrap();
    // img1..3 are "tiger cat", img0 is "banana" (reference.json).
    let write = |dir: &str, files: &[(&str, &[&str])]| {
        let d = tmp.path().join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let mut imgs = Vec::new();
        for (pi, (prompt, srcs)) in files.iter().enumerate() {
            for (k, src) in srcs.iter().enumerate() {
                let name = format!("p{pi:03}_n{k:02}.png");
                std::fs::copy(fixture().join(src), d.join(&name)).unwrap();
                imgs.push(serde_json::json!({"file": name, "prompt_index": pi, "prompt": prompt, "image_index": k, "seed": k}));
            }
        }
        let m = serde_json::json!({"model": "x", "prompts": files.iter().map(|f| f.0).collect::<Vec<_>>(), "images": imgs});
        std::fs::write(d.join("manifest.json"), m.to_string()).unwrap();
    };
    write(
        "before",
        &[
            ("a photo of a cat", &["img1.png", "img2.png"]),
            ("a photo of a banana", &["img0.png", "img0.png"]),
        ],
    );
    write(
        "after",
        &[
            ("a photo of a cat", &["img0.png", "img3.png"]),
            ("a photo of a banana", &["img0.png", "img1.png"]),
        ],
    );
    std::fs::write(
        tmp.path().join("suite.yaml"),
        "concepts:\n  - name: cat\n    erased: [{prompt: a photo of a cat, expect: {group: cat}}]\n    preserved: [{prompt: a photo of a banana, expect: {label: banana}}]\n",
    )
    .unwrap();
    let judge = format!("onnx:{}", fixture().join("preset.yaml").display());
    let m: Value = common::eval_json(tmp.path(), &judge);
    let c = &m["concepts"][0];
    // erased: 2/2 cats before, 1/2 after; preserved: 2/2 bananas before, 1/2 after.
    assert_eq!(c["acc_e"], serde_json::json!({"before": 1.0, "after": 0.5}));
    assert_eq!(c["acc_s"], serde_json::json!({"before": 1.0, "after": 0.5}));
    // H_c = 2 / (1/0.5 + 1/0.5) = 0.5
    assert_eq!(c["h_c"]["after"], 0.5);
    assert_eq!(m["judge"], judge);
}

#[test]
fn the_runtime_comes_from_ort_lib_or_ort_dylib_path() {
    require_ort();
    let lib = std::env::var("ORT_DYLIB_PATH").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    for dir in ["before", "after"] {
        common::copied_sample_dir(
            &r.join(dir),
            &fixture(),
            &[("a cat", &["img1.png"]), ("a banana", &["img0.png"])],
        );
    }
    std::fs::write(
        r.join("suite.yaml"),
        "concepts:\n  - name: cat\n    erased: [{prompt: a cat, expect: {group: cat}}]\n    preserved: [{prompt: a banana, expect: {label: banana}}]\n",
    )
    .unwrap();
    let judge = format!("onnx:{}", fixture().join("preset.yaml").display());
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = [
        "--before".to_string(),
        s(&r.join("before")),
        "--after".into(),
        s(&r.join("after")),
        "--suite".into(),
        s(&r.join("suite.yaml")),
        "--judge".into(),
        judge,
        "--out".into(),
        s(&r.join("report")),
        "--quiet".into(),
    ];
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fmn-eval"))
            .args(&args)
            .args(extra)
            .env_remove("ORT_DYLIB_PATH")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for want in [
        "preset.yaml",
        "ORT_DYLIB_PATH is not set",
        "install-onnxruntime.sh",
    ] {
        assert!(err.contains(want), "`{want}` not in: {err}");
    }
    let o = run(&["--ort-lib", &lib]);
    assert!(o.status.success(), "{}", common::stderr(&o));
}
