//! The `clip:` judge against transformers' CLIPModel on the tiny fixture
//! (tests/fixtures/gen/make_clip_fixture.py): logits, CLIP scores and zero-shot labels.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_eval::judge::{ClipJudge, Judge, JudgeSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("clip-tiny-reference.json")).unwrap(),
    )
    .unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn images(r: &serde_json::Value) -> Vec<image::RgbImage> {
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            image::open(fixtures().join("clip-tiny").join(p.as_str().unwrap()))
                .unwrap()
                .to_rgb8()
        })
        .collect()
}

#[test]
fn logits_and_clip_scores_match_transformers() {
    let r = reference();
    let judge = ClipJudge::load(&fixtures().join("clip-tiny")).unwrap();
    let imgs = images(&r);
    let prompts: Vec<&str> = r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let logits: Vec<Vec<f32>> = judge.logits(&imgs, &prompts).unwrap().to_vec2().unwrap();
    let want = rows(&r["logits_per_image"]);
    let mut worst = 0f64;
    for (g, w) in logits.iter().flatten().zip(want.iter().flatten()) {
        worst = worst.max((*g as f64 - w).abs());
    }
    println!("CLIP logits vs transformers: max abs error {worst:.2e}");
    assert!(worst < 1e-3, "max abs error {worst}");

    // CLIP score of image i with prompt i: 100 · max(cos, 0) from the reference embeddings.
    let (ie, te) = (rows(&r["image_embeds"]), rows(&r["text_embeds"]));
    let scores = judge.clip_scores(&imgs, &prompts).unwrap().unwrap();
    for i in 0..imgs.len() {
        let cos: f64 = ie[i].iter().zip(&te[i]).map(|(a, b)| a * b).sum();
        let want = 100.0 * cos.max(0.0);
        assert!(
            (scores[i] - want).abs() < 1e-3,
            "{i}: {} vs {want}",
            scores[i]
        );
    }
}

#[test]
fn zero_shot_labels_come_from_the_suite() {
    let r = reference();
    let judge = ClipJudge::load(&fixtures().join("clip-tiny")).unwrap();
    let imgs = images(&r);
    let expect = |l: &str| BTreeMap::from([("label".to_string(), l.to_string())]);
    judge.check_expect(&expect("bob")).unwrap();
    let err = judge.judge(&imgs).unwrap_err().to_string();
    assert!(err.contains("at least two labels"), "{err}");
    assert!(judge
        .check_expect(&BTreeMap::from([("object".to_string(), "x".to_string())]))
        .is_err());

    let judge = ClipJudge::load(&fixtures().join("clip-tiny")).unwrap();
    for l in ["a red circle", "bob", "a dog"] {
        judge.check_expect(&expect(l)).unwrap();
    }
    let verdicts = judge.judge(&imgs).unwrap();
    // Labels sorted: "a dog", "a red circle", "bob"; prompts "a photo of {label}" -> the
    // reference's text order is [red circle, bob, dog]: softmax over the same logits.
    let logits = rows(&r["logits_per_image"]);
    let order = [2usize, 0, 1];
    let names = ["a dog", "a red circle", "bob"];
    for (i, v) in verdicts.iter().enumerate() {
        let l: Vec<f64> = order.iter().map(|&k| logits[i][k]).collect();
        let m = l.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = l.iter().map(|x| (x - m).exp()).sum();
        let (best, p) = l
            .iter()
            .enumerate()
            .map(|(k, x)| (k, (x - m).exp() / z))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let want = (p >= 0.5).then(|| names[best].to_string());
        assert_eq!(v.labels["label"], want, "image {i}: {}", v.description);
    }
    assert_eq!(
        "clip:some/dir".parse::<JudgeSpec>(),
        Ok(JudgeSpec::Clip("some/dir".into()))
    );
}
