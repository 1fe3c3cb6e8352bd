//! Bad `onnx:` judge presets give clear errors naming the preset and what is wrong: unknown
//! keys, keys of another kind, a labels file that does not fit the model's output, missing
//! reference images. Uses the tiny fixtures of tests/fixtures/gen/make_onnx_*.py; needs ONNX
//! Runtime (`export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)`).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use fmn_eval::judge::{KindPreset, OnnxJudge, OnnxKind, OnnxPreset};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    common::repo_root().join("tests/fixtures")
}

/// Writes `text` as `dir/name.yaml` (with `@` replaced by the fixtures folder).
fn preset(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    let text = text.replace('@', fixtures().to_str().unwrap());
    std::fs::write(&p, text).unwrap();
    p
}

/// Loading `p` fails with an error holding the preset's file name and every needle.
fn fails(p: &Path, needles: &[&str]) -> String {
    common::require_ort();
    let err = match OnnxJudge::load(p) {
        Ok(_) => panic!("{} should not load", p.display()),
        Err(e) => format!("{e:#}"),
    };
    let file = p.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(file), "`{file}` not in: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    err
}

const DETECTOR: &str = "kind: detector\nmodel: @/onnx-detector/detector.onnx\nlabels: @/onnx-detector/labels.txt\ninput: {size: [16, 16]}\n";
const FACE: &str =
    "kind: face\nmodel: @/onnx-face/embedder.onnx\ninput: {size: [12, 12]}\nthreshold: 0.5\n";

#[test]
fn an_explicit_classifier_kind_loads_like_the_default() {
    common::require_ort();
    let tmp = tempfile::tempdir().unwrap();
    let p = preset(
        tmp.path(),
        "classifier",
        "kind: classifier\nmodel: @/onnx-classifier/classifier.onnx\nlabels: @/onnx-classifier/labels.txt\ninput: {size: [8, 8]}\n",
    );
    assert_eq!(OnnxJudge::load(&p).unwrap().kind(), OnnxKind::Classifier);
}

#[test]
fn unknown_keys_and_keys_of_another_kind_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fails(
        &preset(d, "typo", &format!("{DETECTOR}score_treshold: 0.3\n")),
        &["unknown field `score_treshold`", "kind: detector"],
    );
    // `references` is a face key; a classifier (the default kind) does not know it.
    fails(
        &preset(
            d,
            "classifier-refs",
            "model: @/onnx-classifier/classifier.onnx\nlabels: @/onnx-classifier/labels.txt\ninput: {size: [8, 8]}\nreferences: refs\n",
        ),
        &["unknown field `references`", "kind: classifier"],
    );
    fails(
        &preset(
            d,
            "face-labels",
            &format!("{FACE}references: x\nlabels: l.txt\n"),
        ),
        &["unknown field `labels`", "kind: face"],
    );
    fails(
        &preset(d, "softmax", &format!("{DETECTOR}softmax: false\n")),
        &["unknown field `softmax`"],
    );
    fails(
        &preset(d, "kind", &DETECTOR.replace("detector", "segmenter")),
        &[
            "unknown variant `segmenter`",
            "`classifier`, `detector`, `face`",
        ],
    );
    fails(
        &preset(d, "layout", &format!("{DETECTOR}layout: sideways\n")),
        &["unknown variant `sideways`", "anchors_first"],
    );
    fails(
        &preset(d, "iou", &format!("{DETECTOR}iou_threshold: 1.5\n")),
        &["iou_threshold 1.5"],
    );
    fails(
        &preset(
            d,
            "threshold",
            &format!("{FACE}references: x\n").replace("0.5", "2"),
        ),
        &["threshold 2 is not a cosine similarity"],
    );
}

#[test]
fn a_labels_file_that_does_not_fit_the_output_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let labels = d.join("four.txt");
    std::fs::write(&labels, "a\nb\nc\nd\n").unwrap();
    let four = format!("labels: {}\n", labels.display());
    // The channels-first model declares [N, 7, 16]: checked at load.
    let p = preset(
        d,
        "four",
        &DETECTOR.replace("labels: @/onnx-detector/labels.txt\n", &four),
    );
    fails(&p, &["[-1, 7, 16]", "needs [N, 8, A]", "four.txt"]);
    // The same for the anchors-first model.
    let p = preset(
        d,
        "four-anchors-first",
        &format!(
            "{}layout: anchors_first\n",
            DETECTOR
                .replace("detector.onnx", "detector-anchors-first.onnx")
                .replace("labels: @/onnx-detector/labels.txt\n", &four)
        ),
    );
    fails(&p, &["[-1, 16, 7]", "needs [N, A, 8]", "four.txt"]);
    // The wrong layout for the model is the same mismatch.
    let p = preset(
        d,
        "channels-first-on-anchors-first",
        &DETECTOR.replace("detector.onnx", "detector-anchors-first.onnx"),
    );
    fails(
        &p,
        &["[-1, 16, 7]", "(layout: channels_first)", "needs [N, 7, A]"],
    );
    // Groups must name labels, and cannot be `none` or a label's name.
    for (name, groups, needle) in [
        (
            "g1",
            "groups: {nudity: [ANUS_EXPOSED]}\n",
            "`ANUS_EXPOSED`, which is not in",
        ),
        ("g2", "groups: {none: [FACE_FEMALE]}\n", "`none` cannot be"),
        (
            "g3",
            "groups: {FACE_FEMALE: [FACE_FEMALE]}\n",
            "would be ambiguous",
        ),
    ] {
        fails(&preset(d, name, &format!("{DETECTOR}{groups}")), &[needle]);
    }
    // The input size is checked against the model.
    fails(
        &preset(d, "size", &DETECTOR.replace("[16, 16]", "[32, 32]")),
        &["[N, 3, 32, 32]", "[-1, 3, 16, 16]"],
    );
}

#[test]
fn missing_or_empty_references_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let refs = fixtures().join("onnx-face/refs");
    fails(
        &preset(
            d,
            "missing",
            &format!(
                "{FACE}references: {{alice: {}, carol: {}}}\n",
                refs.join("alice").display(),
                d.join("carol").display()
            ),
        ),
        &["identity `carol`", "cannot read folder", "carol"],
    );
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "no images").unwrap();
    fails(
        &preset(
            d,
            "empty",
            &format!("{FACE}references: {}\n", empty.display()),
        ),
        &["identity `empty`", "holds no png/jpg/jpeg images"],
    );
    fails(
        &preset(
            d,
            "none",
            &format!("{FACE}references: {{none: {}}}\n", empty.display()),
        ),
        &["`none` cannot name an identity"],
    );
    fails(
        &preset(d, "list", &format!("{FACE}references: [a, b]\n")),
        &["a folder, or a map of identity name to folder"],
    );
    fails(&preset(d, "no-refs", FACE), &["missing field `references`"]);
    // A labels file that does not exist.
    fails(
        &preset(
            d,
            "no-labels",
            &DETECTOR.replace("onnx-detector/labels.txt", "onnx-detector/nope.txt"),
        ),
        &["cannot read the labels file", "nope.txt"],
    );
}

#[test]
fn the_template_presets_parse() {
    let dir = common::repo_root().join("configs/eval/judges");
    let load = |f: &str| OnnxPreset::load(&dir.join(f)).unwrap();
    assert_eq!(load("imagenet.yaml").kind(), OnnxKind::Classifier);
    let nudenet = load("nudenet.yaml");
    let KindPreset::Detector(d) = &nudenet.kind else {
        panic!("nudenet.yaml is not a detector");
    };
    assert_eq!(nudenet.input.size, [320, 320]);
    let labels: Vec<String> = std::fs::read_to_string(&d.labels)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(labels.len(), 18);
    assert_eq!(labels[0], "FEMALE_GENITALIA_COVERED");
    assert_eq!(labels[17], "BUTTOCKS_COVERED");
    let nudity = &d.groups["nudity"];
    assert!(nudity
        .iter()
        .all(|l| labels.contains(l) && l.ends_with("_EXPOSED")));
    assert_eq!(nudity.len(), 6);
    let face = load("face-identity.yaml");
    let KindPreset::Face(f) = &face.kind else {
        panic!("face-identity.yaml is not a face preset");
    };
    assert_eq!(face.input.size, [112, 112]);
    assert_eq!(f.references.len(), 3);
    assert_eq!(f.references["person_a"], dir.join("faces/person_a"));
}

#[test]
fn the_input_block_takes_fmn_onnx_keys_and_names_unknown_ones() {
    common::require_ort();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let classifier =
        "model: @/onnx-classifier/classifier.onnx\nlabels: @/onnx-classifier/labels.txt\n";
    let p = preset(
        d,
        "bgr",
        &format!("{classifier}input: {{size: [8, 8], channels: bgr, filter: lanczos3, resize: letterbox, pad: [127, 127, 127]}}\n"),
    );
    let loaded = OnnxPreset::load(&p).unwrap();
    assert_eq!(loaded.input.channels, fmn_onnx::ChannelOrder::Bgr);
    assert_eq!(loaded.input.filter, fmn_onnx::Filter::Lanczos3);
    assert!(OnnxJudge::load(&p).is_ok());
    fails(
        &preset(
            d,
            "chanels",
            &format!("{classifier}input: {{size: [8, 8], chanels: bgr}}\n"),
        ),
        &["unknown field `chanels`"],
    );
    fails(
        &preset(
            d,
            "std",
            &format!("{classifier}input: {{size: [8, 8], std: [1, 0, 1]}}\n"),
        ),
        &["input.std must be finite and non-zero"],
    );
}

/// `model_sha256` pins the model file (checked at load); `model_help` says how to get a
/// missing one; `nms: opencv` needs an IoU threshold.
#[test]
fn the_model_pin_and_help_and_the_nms_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let model = fixtures().join("onnx-detector/detector.onnx");
    let sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(std::fs::read(&model).unwrap()))
    };
    let pinned = preset(
        d,
        "pinned",
        &format!("{DETECTOR}model_sha256: {}\nnms: opencv\niou_threshold: 0.45\nprefilter_threshold: 0.2\n", sha.to_uppercase()),
    );
    let judge = OnnxJudge::load(&pinned).unwrap();
    assert_eq!(judge.files().model_sha256, sha);
    assert_eq!(judge.files().model, model.display().to_string());
    let other = format!("{}0", &sha[..63]);
    fails(
        &preset(
            d,
            "other",
            &format!("{DETECTOR}model_sha256: {other}\nmodel_help: get it from X\n"),
        ),
        &[
            "has sha256",
            &sha,
            "pins model_sha256",
            &other,
            "get it from X",
        ],
    );
    fails(
        &preset(d, "short", &format!("{DETECTOR}model_sha256: abc\n")),
        &["model_sha256 `abc` is not 64 hex digits"],
    );
    fails(
        &preset(
            d,
            "missing",
            &DETECTOR
                .replace("detector.onnx", "nope.onnx")
                .replace("input:", "model_help: run get-it.sh\ninput:"),
        ),
        &["no model file", "nope.onnx", "(run get-it.sh)"],
    );
    fails(
        &preset(d, "opencv", &format!("{DETECTOR}nms: opencv\n")),
        &["`nms: opencv` needs an iou_threshold"],
    );
    fails(
        &preset(d, "nms", &format!("{DETECTOR}nms: fast\n")),
        &["unknown variant `fast`", "greedy", "opencv"],
    );
}
