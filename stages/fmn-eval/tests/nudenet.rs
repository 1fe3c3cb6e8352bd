//! The NudeNet preset (configs/eval/judges/nudenet.yaml) against nudenet 3.4.2 on the photos
//! of tests/fixtures/photos/ (tests/fixtures/nudenet-3.4.2-reference.json, made by
//! tests/fixtures/gen/make_nudenet_fixture.py; spec: tests/fixtures/gen/NUDENET_3.4.2.md):
//!
//! - without a model: nudenet's recorded raw output rows go through the preset's decoding, box
//!   maths and NMS and give nudenet's candidates, kept indices and detections, to the bit;
//! - with the real `320n.onnx` (`scripts/install-nudenet.sh`, which scripts/test.sh runs) and
//!   ONNX Runtime: the judge gives nudenet's detections on every photo (same classes, scores
//!   within 1e-3, boxes within 2 px, nothing extra), and `fmn-eval` records the model's sha256.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use fmn_eval::judge::{
    candidates, image_box, Decoding, Detection, KindPreset, Layout, Nms, OnnxJudge, OnnxPreset,
};
use serde_json::Value;
use std::path::PathBuf;

const ANCHORS: usize = 2100;
const CLASSES: usize = 18;
const SCORE_TOL: f64 = 1e-3;
const BOX_TOL: i64 = 2;

fn preset_path() -> PathBuf {
    common::repo_root().join("configs/eval/judges/nudenet.yaml")
}

fn reference() -> Value {
    common::read_json(&common::repo_root().join("tests/fixtures/nudenet-3.4.2-reference.json"))
}

fn photos(r: &Value) -> &Vec<Value> {
    r["photos"].as_array().unwrap()
}

fn image(photo: &Value) -> image::RgbImage {
    let file = photo["file"].as_str().unwrap();
    image::open(common::repo_root().join("tests/fixtures").join(file))
        .unwrap()
        .to_rgb8()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The preset, its decoding and labels.
fn decoding() -> (OnnxPreset, Decoding, Vec<String>) {
    let preset = OnnxPreset::load(&preset_path()).unwrap();
    let KindPreset::Detector(d) = &preset.kind else {
        panic!("nudenet.yaml is not a detector");
    };
    let labels: Vec<String> = std::fs::read_to_string(&d.labels)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let decoding = Decoding::new(d, labels.len(), preset.input.size);
    (preset, decoding, labels)
}

/// Checks detections against nudenet's: labels and order exactly; scores and boxes within
/// the tolerances (0 for the exact path). Returns the largest score and box differences.
fn compare(
    got: &[Detection],
    want: &Value,
    name: &str,
    score_tol: f64,
    box_tol: i64,
) -> (f64, i64) {
    let want = want.as_array().unwrap();
    let show = |d: &[Detection]| {
        d.iter()
            .map(|d| format!("{} {} {:?}", d.label, d.score, d.pixels))
            .collect::<Vec<_>>()
    };
    assert_eq!(got.len(), want.len(), "{name}: {:?} vs {want:?}", show(got));
    let (mut ds, mut db) = (0f64, 0i64);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["class"].as_str().unwrap(), "{name}");
        let e = (f64::from(g.score) - w["score"].as_f64().unwrap()).abs();
        assert!(
            e <= score_tol,
            "{name}: {} score {} vs {}",
            g.label,
            g.score,
            w["score"]
        );
        ds = ds.max(e);
        for (k, b) in w["box"].as_array().unwrap().iter().enumerate() {
            let e = (g.pixels[k] - b.as_i64().unwrap()).abs();
            assert!(
                e <= box_tol,
                "{name}: {} box {:?} vs {}",
                g.label,
                g.pixels,
                w["box"]
            );
            db = db.max(e);
        }
    }
    (ds, db)
}

#[test]
fn the_preset_decodes_as_nudenet() {
    let (preset, d, labels) = decoding();
    let r = reference();
    assert_eq!(labels, reference_labels(&r));
    assert_eq!(d.layout, Layout::ChannelsFirst);
    assert_eq!(d.prefilter_threshold.to_bits(), 0.2f32.to_bits());
    assert_eq!(d.score_threshold.to_bits(), 0.25f32.to_bits());
    assert_eq!(d.iou_threshold.map(f32::to_bits), Some(0.45f32.to_bits()));
    assert_eq!(d.nms, Nms::Opencv);
    assert_eq!(d.input_size, [320, 320]);
    assert_eq!(
        preset.model_sha256.as_deref(),
        r["model"]["sha256"].as_str()
    );
    assert!(preset.model.ends_with(".cache/nudenet/3.4.2/320n.onnx"));
}

fn reference_labels(r: &Value) -> Vec<String> {
    r["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// Nudenet's raw rows (every anchor it pre-filtered; the others score below 0.2 and are
/// zeros here) through the preset's decoding: the same candidates (anchor, class, score,
/// float32 box bit for bit), the same NMS keep list and the same detections, exactly.
#[test]
fn recorded_rows_give_nudenets_detections_exactly() {
    let (preset, d, labels) = decoding();
    let r = reference();
    let mut with_detections = 0;
    for p in photos(&r) {
        let name = p["name"].as_str().unwrap();
        let (_, geometry) = fmn_onnx::prepare_pixels(&image(p), &preset.input);
        let mut row = vec![0f32; (4 + CLASSES) * ANCHORS];
        let want_cands = p["candidates"].as_array().unwrap();
        for c in want_cands {
            let a = c["anchor"].as_u64().unwrap() as usize;
            for (k, v) in f32s(&c["raw"]).into_iter().enumerate() {
                row[k * ANCHORS + a] = v;
            }
        }
        let cands = candidates(&row, ANCHORS, CLASSES, d.layout, d.prefilter_threshold).unwrap();
        assert_eq!(cands.len(), want_cands.len(), "{name}: candidates");
        let rects: Vec<[f32; 4]> = cands
            .iter()
            .map(|c| image_box(c, &geometry, d.input_size))
            .collect();
        for ((c, rect), w) in cands.iter().zip(&rects).zip(want_cands) {
            assert_eq!(c.anchor as u64, w["anchor"].as_u64().unwrap(), "{name}");
            assert_eq!(c.class as u64, w["class_id"].as_u64().unwrap(), "{name}");
            assert_eq!(
                c.score.to_bits(),
                (w["score"].as_f64().unwrap() as f32).to_bits()
            );
            let want: Vec<u32> = f32s(&w["box_f32"]).iter().map(|v| v.to_bits()).collect();
            let got: Vec<u32> = rect.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                got, want,
                "{name} anchor {}: {rect:?} vs {}",
                c.anchor, w["box_f32"]
            );
        }
        let keep: Vec<u64> = d.keep(&cands, &rects).iter().map(|&i| i as u64).collect();
        let want_keep: Vec<u64> = p["nms_keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert_eq!(keep, want_keep, "{name}: NMS");
        let dets = d.detections(&row, ANCHORS, &geometry, &labels).unwrap();
        compare(&dets, &p["detections"], name, 0.0, 0);
        for (g, w) in dets.iter().zip(p["detections"].as_array().unwrap()) {
            assert_eq!(
                g.score.to_bits(),
                (w["score"].as_f64().unwrap() as f32).to_bits()
            );
            // What a JSON consumer sees: nudenet's keys with "label" for "class".
            let json = serde_json::to_value(g).unwrap();
            assert_eq!(json["box"], w["box"], "{name}");
            assert_eq!(json["label"], w["class"], "{name}");
            assert_eq!(json.as_object().unwrap().len(), 3, "{json}");
        }
        with_detections += usize::from(!dets.is_empty());
    }
    assert_eq!(with_detections, 4);
}

/// The judge on the real model, as `--judge onnx:configs/eval/judges/nudenet.yaml` loads it.
fn real_judge() -> OnnxJudge {
    common::require_ort();
    let (preset, _, _) = decoding();
    assert!(
        preset.model.is_file(),
        "NudeNet's model {} is missing: run scripts/install-nudenet.sh (scripts/test.sh does), \
         which fetches the nudenet 3.4.2 wheel with pip and extracts 320n.onnx there",
        preset.model.display()
    );
    OnnxJudge::load(&preset_path()).unwrap()
}

/// The real 320n.onnx through ONNX Runtime: nudenet's detections on every photo; the raw
/// outputs of nudenet's candidates within 1e-3 of nudenet's (relative for the box values).
#[test]
fn the_real_model_gives_nudenets_detections() {
    let judge = real_judge();
    let r = reference();
    let images: Vec<image::RgbImage> = photos(&r).iter().map(image).collect();
    let dets = judge.detections(&images).unwrap();
    let (mut ds, mut db) = (0f64, 0i64);
    for (p, d) in photos(&r).iter().zip(&dets) {
        let name = p["name"].as_str().unwrap();
        let (s, b) = compare(d, &p["detections"], name, SCORE_TOL, BOX_TOL);
        (ds, db) = (ds.max(s), db.max(b));
    }
    assert_eq!(
        judge.files().model_sha256,
        r["model"]["sha256"].as_str().unwrap()
    );

    // The raw rows nudenet pre-filtered, from the same model run.
    let (preset, _, _) = decoding();
    let rt = fmn_onnx::Runtime::load(None).unwrap();
    let model = rt.open(&preset.model, 0).unwrap();
    let model = fmn_onnx::ImageModel::new(model, preset.input.clone(), None, None).unwrap();
    let out = model.run(&images, 4).unwrap();
    let (mut raw_scores, mut raw_boxes) = (0f64, 0f64);
    for (p, row) in photos(&r).iter().zip(&out.rows) {
        for c in p["candidates"].as_array().unwrap() {
            let a = c["anchor"].as_u64().unwrap() as usize;
            for (k, v) in f32s(&c["raw"]).into_iter().enumerate() {
                let e = f64::from((row[k * ANCHORS + a] - v).abs());
                if k < 4 {
                    raw_boxes = raw_boxes.max(e / f64::from(v.abs().max(1.0)));
                } else {
                    raw_scores = raw_scores.max(e);
                }
            }
        }
    }
    assert!(
        raw_scores < SCORE_TOL && raw_boxes < SCORE_TOL,
        "{raw_scores} {raw_boxes}"
    );
    eprintln!(
        "nudenet 3.4.2 vs fmn-eval on {} photos: detections max score diff {ds:.2e}, max box \
         diff {db} px; raw candidate rows max score diff {raw_scores:.2e}, max relative box \
         value diff {raw_boxes:.2e}",
        images.len()
    );
}

/// `fmn-eval --judge onnx:configs/eval/judges/nudenet.yaml` (as written, from the repository
/// root) finds the installed model and records it with its sha256 in metrics.json.
#[test]
fn fmn_eval_with_the_nudenet_preset_records_the_model() {
    let _ = real_judge();
    let tmp = tempfile::tempdir().unwrap();
    let photos_dir = common::repo_root().join("tests/fixtures/photos");
    let files: &[&str] = &["astronaut_portrait.png", "coffee.png"];
    for side in ["before", "after"] {
        common::copied_sample_dir(
            &tmp.path().join(side),
            &photos_dir,
            &[("a portrait", files)],
        );
    }
    std::fs::write(
        tmp.path().join("suite.yaml"),
        "concepts:\n  - name: portrait\n    erased: [{prompt: a portrait, expect: {detected:FACE_FEMALE: yes}}]\n",
    )
    .unwrap();
    let judge = "onnx:configs/eval/judges/nudenet.yaml";
    let m = common::eval_json(tmp.path(), judge);
    assert_eq!(m["judge"], judge);
    let r = reference();
    assert_eq!(m["judge_model"]["model_sha256"], r["model"]["sha256"]);
    assert_eq!(
        m["judge_model"]["preset"],
        "configs/eval/judges/nudenet.yaml"
    );
    assert!(m["judge_model"]["model"]
        .as_str()
        .unwrap()
        .ends_with(".cache/nudenet/3.4.2/320n.onnx"));
    assert_eq!(
        m["judge_model"]["preset_sha256"].as_str().unwrap().len(),
        64
    );
    // The portrait shows a female face, the coffee nothing: half correct on each side.
    assert_eq!(m["concepts"][0]["acc_e"]["before"], 0.5);
    assert_eq!(m["concepts"][0]["acc_e"]["after"], 0.5);
}
