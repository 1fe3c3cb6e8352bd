//! The fmn-eval binary on synthetic before/after folders of toy renders, whose expected
//! judgements are known, so every metric has a hand-computed value.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::{run, sample_dir, stderr, stdout, Shows};
use fmn_toy_world::{Character::*, Colour::*, Object::*};
use serde_json::Value;
use std::path::Path;

const SUITE: &str = r#"
name: test suite
concepts:
  - name: bob
    erased:
      - {prompt: "a photo of bob", expect: {character: bob}}
    synonyms:
      - {prompt: "a picture of bob", expect: {character: bob}}
      - {prompt: "an image of bob", expect: {character: bob}}
    preserved:
      - {prompt: "a photo of a yellow circle", expect: {object: circle, colour: yellow, character: none}}
      - {prompt: "a photo of kiki", expect: {character: kiki}}
  - name: kiki
    erased:
      - {prompt: "a photo of kiki", expect: {character: kiki}}
    preserved:
      - {prompt: "a photo of bob", expect: {character: bob}}
"#;

const BOB: Shows = Shows::Char(Bob);
const KIKI: Shows = Shows::Char(Kiki);
const YELLOW_CIRCLE: Shows = Shows::Plain(Circle, Yellow);

/// Before: every prompt shows what it names. After: bob is gone from "a photo of bob" (0/2),
/// kept in one of the 4 synonym images, kiki lost in 1 of 2 images.
fn folders(root: &Path) {
    sample_dir(
        &root.join("before"),
        &[
            ("a photo of bob", vec![(0, BOB), (1, BOB)]),
            ("a picture of bob", vec![(0, BOB), (1, BOB)]),
            ("an image of bob", vec![(0, BOB), (1, BOB)]),
            (
                "a photo of a yellow circle",
                vec![(0, YELLOW_CIRCLE), (1, YELLOW_CIRCLE)],
            ),
            ("a photo of kiki", vec![(0, KIKI), (1, KIKI)]),
        ],
    );
    sample_dir(
        &root.join("after"),
        &[
            (
                "a photo of bob",
                vec![(0, YELLOW_CIRCLE), (1, YELLOW_CIRCLE)],
            ),
            ("a picture of bob", vec![(0, BOB), (1, YELLOW_CIRCLE)]),
            (
                "an image of bob",
                vec![
                    (0, Shows::Plain(Square, Red)),
                    (1, Shows::Plain(Square, Red)),
                ],
            ),
            (
                "a photo of a yellow circle",
                vec![(0, YELLOW_CIRCLE), (1, YELLOW_CIRCLE)],
            ),
            (
                "a photo of kiki",
                vec![(0, KIKI), (1, Shows::Plain(Triangle, Blue))],
            ),
        ],
    );
    std::fs::write(root.join("suite.yaml"), SUITE).unwrap();
}

fn eval_args<'a>(root: &'a str, out: &'a str) -> Vec<String> {
    vec![
        "--before".into(),
        format!("{root}/before"),
        "--after".into(),
        format!("{root}/after"),
        "--suite".into(),
        format!("{root}/suite.yaml"),
        "--judge".into(),
        "toy".into(),
        "--out".into(),
        format!("{root}/{out}"),
    ]
}

fn run_s(args: &[String]) -> std::process::Output {
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn concept<'a>(metrics: &'a Value, name: &str) -> &'a Value {
    metrics["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["concept"] == name)
        .unwrap()
}

fn close(v: &Value, want: f64) {
    close_tol(v, want, 1e-9);
}

fn close_tol(v: &Value, want: f64, tol: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((got - want).abs() < tol, "{got} != {want}");
}

#[test]
fn metrics_of_synthetic_folders_match_hand_computed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    folders(tmp.path());
    let mut args = eval_args(root, "report");
    args.push("--json".into());
    let o = run_s(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("report/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m, on_disk);
    // The toy judge is shipped: no judge_model record.
    assert!(m.get("judge_model").is_none());

    let bob = concept(&m, "bob");
    assert_eq!(
        bob["images"],
        serde_json::json!({"erased": 2, "synonym": 4, "preserved": 4})
    );
    close(&bob["acc_e"]["before"], 1.0);
    close(&bob["acc_e"]["after"], 0.0);
    close(&bob["forgetting"], 1.0);
    close(&bob["acc_g"]["before"], 1.0);
    close(&bob["acc_g"]["after"], 0.25);
    close(&bob["acc_s"]["before"], 1.0);
    close(&bob["acc_s"]["after"], 0.75);
    // H_o = 3 / (1/1 + 1/0.75 + 1/0.75) = 9/11; H_c = 2 / (1 + 4/3) = 6/7
    close(&bob["h_o"]["after"], 9.0 / 11.0);
    close(&bob["h_c"]["after"], 6.0 / 7.0);
    // Before, nothing is forgotten: 1 − Acc_e = 0 -> 0.
    close(&bob["h_o"]["before"], 0.0);

    // Drift over bob's 4 preserved pairs: 3 identical, one kiki replaced by a blue triangle.
    let b = image::open(tmp.path().join("before/p004_n01.png"))
        .unwrap()
        .to_rgb8();
    let a = image::open(tmp.path().join("after/p004_n01.png"))
        .unwrap()
        .to_rgb8();
    let diff: u64 = b
        .as_raw()
        .iter()
        .zip(a.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    let mad = diff as f64 / 255.0 / b.as_raw().len() as f64;
    assert!(mad > 0.01);
    close(&bob["drift"]["mean_abs_diff"], mad / 4.0);
    let ssim_changed = fmn_eval::drift::ssim(&b, &a).unwrap();
    assert!(ssim_changed < 0.95);
    close(&bob["drift"]["ssim"], (3.0 + ssim_changed) / 4.0);
    assert!(bob["attention_share"].is_null());
    assert!(bob["clip_score"].is_null());

    let kiki = concept(&m, "kiki");
    close(&kiki["acc_e"]["after"], 0.5);
    close(&kiki["forgetting"], 0.5);
    assert!(kiki["acc_g"].is_null());
    assert!(kiki["h_o"].is_null());
    // Acc_s after = 0 ("a photo of bob" lost bob): H_c = 0.
    close(&kiki["acc_s"]["after"], 0.0);
    close(&kiki["h_c"]["after"], 0.0);
    close(&kiki["drift"]["mean_abs_diff"], {
        // both "a photo of bob" pairs changed: mean of their MADs
        let mut s = 0.0;
        for k in 0..2 {
            let b = image::open(tmp.path().join(format!("before/p000_n0{k}.png")))
                .unwrap()
                .to_rgb8();
            let a = image::open(tmp.path().join(format!("after/p000_n0{k}.png")))
                .unwrap()
                .to_rgb8();
            s += fmn_eval::drift::mean_abs_diff(&b, &a).unwrap();
        }
        s / 2.0
    });

    let report = tmp.path().join("report");
    for f in [
        "report.html",
        "results.json",
        "charts/bob.svg",
        "charts/kiki.svg",
        "images/p000_n00_before.png",
        "images/p004_n01_after.png",
    ] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        2 * (2 + 4 + 4 + 2 + 2)
    );
    assert!(html.contains("“a photo of bob”"));
    // Inputs are never modified: no new files in the sample folders.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("before"))
            .unwrap()
            .count(),
        11
    );
}

#[test]
fn shards_merge_into_the_unsharded_metrics_and_summary_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    folders(tmp.path());
    let o = run_s(&eval_args(root, "whole"));
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("bob: Acc_e 1.00 -> 0.00 (forgetting 1.00), Acc_g 1.00 -> 0.25, Acc_s 1.00 -> 0.75, H_o 0.818, H_c 0.857, drift MAD "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(
            "kiki: Acc_e 1.00 -> 0.50 (forgetting 0.50), Acc_g n/a, Acc_s 1.00 -> 0.00, H_c 0.000"
        ),
        "{}",
        lines[1]
    );

    for i in 0..3 {
        let mut args = eval_args(root, &format!("shard{i}"));
        args.extend(["--shard".into(), format!("{i}/3")]);
        let o = run_s(&args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let shard0: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("shard0/results.json")).unwrap(),
    )
    .unwrap();
    // 10 pairs in 3 shards: 4 + 3 + 3; "a photo of kiki" and "a photo of bob" count for two concepts.
    assert!(shard0["items"].as_array().unwrap().len() < 16);

    let o = run(&[
        "merge",
        &format!("{root}/shard0"),
        &format!("{root}/shard2"),
        "--out",
        &format!("{root}/merged"),
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("shard 1/3 is missing"),
        "{}",
        stderr(&o)
    );

    let o = run(&[
        "merge",
        &format!("{root}/shard0"),
        &format!("{root}/shard1"),
        &format!("{root}/shard2"),
        "--out",
        &format!("{root}/merged"),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let whole: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("whole/metrics.json")).unwrap(),
    )
    .unwrap();
    for c in ["bob", "kiki"] {
        for k in [
            "images",
            "acc_e",
            "acc_g",
            "acc_s",
            "forgetting",
            "h_o",
            "h_c",
        ] {
            assert_eq!(concept(&merged, c)[k], concept(&whole, c)[k], "{c} {k}");
        }
        for k in ["mean_abs_diff", "ssim"] {
            close(
                &concept(&merged, c)["drift"][k],
                concept(&whole, c)["drift"][k].as_f64().unwrap(),
            );
        }
    }
    assert_eq!(merged["shards"].as_array().unwrap().len(), 3);
    let html = std::fs::read_to_string(tmp.path().join("merged/report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 28);
}

#[test]
fn attention_shares_and_heat_maps_from_saved_attention() {
    use candle_core::{Device, Tensor};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    folders(tmp.path());
    // 10 images, 1 head, 4 pixels (2×2), 77 tokens; every prompt's concept word is token 4.
    // step0: mass v0 on token 4 at pixel 0 only (share v0/4); step1: v1 on token 4 everywhere.
    let write = |dir: &str, v0: f32, v1: f32| {
        let mut a = vec![0f32; 10 * 4 * 77];
        let mut b = vec![0f32; 10 * 4 * 77];
        for r in 0..10 {
            a[(r * 4) * 77 + 4] = v0;
            for p in 0..4 {
                b[(r * 4 + p) * 77 + 4] = v1;
            }
        }
        let t = |v: Vec<f32>| fmn_sd::models::probes::AttentionRecord {
            path: "down.0.attn2".into(),
            height: 2,
            width: 2,
            probs: Tensor::from_vec(v, (10, 1, 4, 77), &Device::Cpu).unwrap(),
        };
        let map = std::collections::BTreeMap::from([
            ("step0/down.0.attn2".to_string(), t(a)),
            ("step1/down.0.attn2".to_string(), t(b)),
        ]);
        fmn_sd::io::attention::save(&tmp.path().join(dir).join("attention.safetensors"), &map)
            .unwrap();
    };
    write("before", 0.5, 0.3);
    write("after", 0.1, 0.1);
    let mut args = eval_args(root, "report");
    args.extend([
        "--tokenizer".into(),
        "tests/fixtures/sd1-tiny/tokenizer".into(),
        "--json".into(),
    ]);
    let o = run_s(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).unwrap();
    // before (0.5/4 + 0.3)/2 = 0.2125, after (0.1/4 + 0.1)/2 = 0.0625 (f32 attention)
    for c in ["bob", "kiki"] {
        close_tol(&concept(&m, c)["attention_share"]["before"], 0.2125, 1e-6);
        close_tol(&concept(&m, c)["attention_share"]["after"], 0.0625, 1e-6);
    }
    let heat = tmp
        .path()
        .join("report/images/p000_n00_bob_before_attn.png");
    assert!(heat.is_file());
    assert!(tmp
        .path()
        .join("report/images/p004_n00_kiki_after_attn.png")
        .is_file());
    // No heat map for preserved prompts.
    assert!(!tmp
        .path()
        .join("report/images/p003_n00_bob_before_attn.png")
        .exists());

    // An attention file whose rows do not match the manifest is an error naming it.
    std::fs::write(tmp.path().join("after/attention.safetensors"), b"junk").unwrap();
    let o = run_s(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("after/attention.safetensors"),
        "{}",
        stderr(&o)
    );
}

/// Writes an fmn-attack-like folder on `concept`: per attack, its images (toy renders) and
/// `attack.json`; an attack named `*-words-*` is the `words` control.
fn attack_dir(dir: &Path, concept: &str, baseline: bool, attacks: &[(&str, Vec<Shows>)]) {
    let mut entries = Vec::new();
    for (name, shows) in attacks {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let mut images = Vec::new();
        for (k, s) in shows.iter().enumerate() {
            let file = format!("p000_n{k:02}.png");
            let (img, _) = fmn_toy_world::render(&common::scene(*s, 100 + k as u64));
            img.save(dir.join(name).join(&file)).unwrap();
            images.push(serde_json::json!({"file": file, "prompt": format!("a photo of <{name}>"), "seed": k, "concept": false, "labels": {}}));
        }
        let method = if name.contains("-words-") {
            "words"
        } else {
            "inversion"
        };
        entries.push(serde_json::json!({"name": name, "method": method, "images": images}));
    }
    let doc = serde_json::json!({"concept": concept, "baseline": baseline, "attacks": entries, "asr": 0.0});
    std::fs::write(dir.join("attack.json"), doc.to_string()).unwrap();
}

#[test]
fn attack_folders_are_judged_into_an_attack_success_rate_per_concept() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_str().unwrap();
    folders(tmp.path());
    // bob: attack a brings him back in 2 of 3 images, attack b in 0 of 2: ASR 2/5, strongest a;
    // the words control shows him in 3 of 3 (chance 1.0), outside the ASR and the strongest.
    attack_dir(
        &tmp.path().join("attack-bob"),
        "bob",
        false,
        &[
            ("a", vec![BOB, YELLOW_CIRCLE, BOB]),
            ("k1-words-s0", vec![BOB, BOB, BOB]),
            ("b", vec![YELLOW_CIRCLE, Shows::Plain(Square, Red)]),
        ],
    );
    attack_dir(
        &tmp.path().join("attack-kiki"),
        "kiki",
        true,
        &[("c", vec![KIKI, KIKI])],
    );
    let mut args = eval_args(root, "report");
    args.extend([
        "--attack".into(),
        format!("{root}/attack-bob"),
        "--attack".into(),
        format!("{root}/attack-kiki"),
        "--json".into(),
        "--quiet".into(),
    ]);
    let o = run_s(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let bob = &concept(&m, "bob")["attack"];
    close(&bob["asr"], 2.0 / 5.0);
    assert_eq!(bob["images"], 5);
    assert_eq!(bob["attacks"], 2);
    assert_eq!(bob["strongest"], "a");
    close(&bob["strongest_rate"], 2.0 / 3.0);
    close(&bob["chance"], 1.0);
    assert_eq!(bob["baseline"], false);
    let kiki = &concept(&m, "kiki")["attack"];
    close(&kiki["asr"], 1.0);
    assert_eq!(kiki["baseline"], true);
    assert_eq!(kiki["chance"], Value::Null);
    // The report shows every attack and control image (10) beside the 28 before/after images.
    let html = std::fs::read_to_string(tmp.path().join("report/report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 28 + 10);
    assert!(
        html.contains("a (2/3)") && html.contains("b (0/2)") && html.contains("k1-words-s0 (3/3)"),
        "attack rows"
    );

    // An attack on a concept the suite does not hold is named.
    attack_dir(
        &tmp.path().join("attack-x"),
        "stripes",
        false,
        &[("d", vec![BOB])],
    );
    let mut args = eval_args(root, "report2");
    args.extend(["--attack".into(), format!("{root}/attack-x")]);
    let o = run_s(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("stripes") && stderr(&o).contains("attack.json"),
        "{}",
        stderr(&o)
    );
}
