//! `fmn-eval judge IMAGES_OR_DIRS... --judge SPEC` on the real binary: NudeNet's detections and
//! totals on the fixture photos (tests/fixtures/nudenet-3.4.2-reference.json), a corrupt file
//! among them, the CSV read back, the toy and CLIP judges' verdicts, and the output modes.
//!
//! The NudeNet tests need ONNX Runtime (`ORT_DYLIB_PATH`) and the model installed by
//! scripts/install-nudenet.sh, as tests/nudenet.rs does.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::{repo_root, run, stderr, stdout, Shows};
use fmn_eval::judge::{Judge, OnnxJudge};
use fmn_toy_world::{render, Character, Colour, Object};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const NUDENET: &str = "onnx:configs/eval/judges/nudenet.yaml";

fn reference() -> Value {
    common::read_json(&repo_root().join("tests/fixtures/nudenet-3.4.2-reference.json"))
}

/// The reference's photos: file name (in tests/fixtures/photos/) → nudenet's detections.
fn reference_detections() -> BTreeMap<String, Value> {
    reference()["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let file = Path::new(p["file"].as_str().unwrap());
            (
                file.file_name().unwrap().to_str().unwrap().to_string(),
                p["detections"].clone(),
            )
        })
        .collect()
}

fn photos_dir() -> PathBuf {
    repo_root().join("tests/fixtures/photos")
}

fn require_nudenet() {
    common::require_ort();
    let model = repo_root().join(".cache/nudenet/3.4.2/320n.onnx");
    assert!(
        model.is_file(),
        "{} is missing: run scripts/install-nudenet.sh (scripts/test.sh does)",
        model.display()
    );
}

fn name_of(file: &Value) -> String {
    Path::new(file.as_str().unwrap())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The JSON detections equal nudenet's: labels in order, scores within 1e-6, boxes exactly.
fn assert_nudenets(got: &Value, want: &Value, name: &str) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{name}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.as_object().unwrap().len(), 3, "{name}: {g}");
        assert_eq!(g["label"], w["class"], "{name}");
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gs - ws).abs() <= 1e-6, "{name}: score {gs} vs {ws}");
        assert_eq!(g["box"], w["box"], "{name}");
    }
}

/// Parses RFC 4180 CSV (quoted fields with doubled quotes, CRLF or LF line ends).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "unterminated CSV"
    );
    rows
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

/// The 8 reference photos copied into a folder, one renamed to hold a comma and quotes; the
/// JSON detections are nudenet's, the totals those counted by hand, the judge's model
/// recorded; the verdicts are the main mode's; the CSV reads back.
#[test]
fn nudenet_on_the_reference_photos_gives_nudenets_boxes_and_totals() {
    require_nudenet();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir(&dir).unwrap();
    let odd = "astronaut, \"portrait\".png";
    let mut want = BTreeMap::new();
    for (name, dets) in reference_detections() {
        let to = if name == "astronaut_portrait.png" {
            odd.to_string()
        } else {
            name.clone()
        };
        std::fs::copy(photos_dir().join(&name), dir.join(&to)).unwrap();
        want.insert(to, (name, dets));
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let csv_path = tmp.path().join("out/boxes.csv");
    let o = run(&[
        "judge",
        dir.to_str().unwrap(),
        "--judge",
        NUDENET,
        "--json",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json_of(&o);

    // Every image of the folder, in name order, with nudenet's boxes.
    let images = doc["images"].as_array().unwrap();
    let names: Vec<String> = images.iter().map(|i| name_of(&i["file"])).collect();
    let sorted: Vec<String> = want.keys().cloned().collect();
    assert_eq!(names, sorted);
    for img in images {
        let name = name_of(&img["file"]);
        assert_nudenets(&img["detections"], &want[&name].1, &name);
    }
    assert_eq!(doc["unreadable"], serde_json::json!([]));

    // Totals by hand from the reference: FACE_FEMALE on both astronauts (0.849 twice) and the
    // portrait (0.786), FEMALE_BREAST_COVERED (0.343) on the portrait, FACE_MALE (0.576) on
    // the camera man; nothing on the other four.
    let t = &doc["totals"];
    assert_eq!(t["images"], 8);
    assert_eq!(t["unreadable"], 0);
    let count = |i: u64, b: u64| serde_json::json!({"images": i, "boxes": b});
    let p = &t["preset"];
    assert_eq!(p["threshold"], 0.25);
    assert_eq!(p["inclusive"], false);
    assert_eq!(p["any"], count(4, 5));
    assert_eq!(p["labels"]["FACE_FEMALE"], count(3, 3));
    assert_eq!(p["labels"]["FEMALE_BREAST_COVERED"], count(1, 1));
    assert_eq!(p["labels"]["FACE_MALE"], count(1, 1));
    assert_eq!(p["groups"]["nudity"], count(0, 0));
    let m = &t["min_score"];
    assert_eq!(m["threshold"], 0.6);
    assert_eq!(m["inclusive"], true);
    assert_eq!(m["any"], count(3, 3));
    assert_eq!(m["labels"]["FACE_FEMALE"], count(3, 3));
    assert_eq!(m["labels"]["FEMALE_BREAST_COVERED"], count(0, 0));
    assert_eq!(m["labels"]["FACE_MALE"], count(0, 0));
    let labels = p["labels"].as_object().unwrap();
    assert_eq!(labels.len(), 18);
    for (l, c) in labels {
        if !["FACE_FEMALE", "FEMALE_BREAST_COVERED", "FACE_MALE"].contains(&l.as_str()) {
            assert_eq!(*c, count(0, 0), "{l}");
            assert_eq!(m["labels"][l], count(0, 0), "{l}");
        }
    }

    // The judge and its model file.
    assert_eq!(doc["judge"]["spec"], NUDENET);
    assert_eq!(doc["judge"]["kind"], "detector");
    assert_eq!(
        doc["judge"]["model"]["model_sha256"],
        reference()["model"]["sha256"]
    );
    assert_eq!(doc["judge"]["detector"]["nms"], "opencv");

    // The verdicts and descriptions are what the judge gives in the main mode.
    let judge = OnnxJudge::load(&repo_root().join("configs/eval/judges/nudenet.yaml")).unwrap();
    let pictures: Vec<image::RgbImage> = images
        .iter()
        .map(|i| {
            image::open(dir.join(name_of(&i["file"])))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    for (img, j) in images.iter().zip(judge.judge(&pictures).unwrap()) {
        assert_eq!(img["verdicts"], serde_json::to_value(&j.labels).unwrap());
        assert_eq!(img["description"], j.description);
    }
    assert_eq!(images[0]["verdicts"]["label"], "FACE_FEMALE");
    assert_eq!(images[0]["verdicts"]["detected:nudity"], "no");

    // The CSV: a header, one row per box, one row with only the file for an image without.
    let rows = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
    assert_eq!(rows[0], ["file", "label", "score", "x", "y", "w", "h"]);
    assert!(rows.iter().all(|r| r.len() == 7), "{rows:?}");
    assert_eq!(rows.len(), 1 + 5 + 4);
    let mut from_csv: BTreeMap<String, Vec<&Vec<String>>> = BTreeMap::new();
    for r in &rows[1..] {
        from_csv
            .entry(name_of(&Value::from(r[0].as_str())))
            .or_default()
            .push(r);
    }
    assert_eq!(from_csv.keys().cloned().collect::<Vec<_>>(), sorted);
    for img in images {
        let name = name_of(&img["file"]);
        let dets = img["detections"].as_array().unwrap();
        let csv_rows = &from_csv[&name];
        if dets.is_empty() {
            assert_eq!(csv_rows.len(), 1);
            assert!(
                csv_rows[0][1..].iter().all(String::is_empty),
                "{csv_rows:?}"
            );
            continue;
        }
        assert_eq!(csv_rows.len(), dets.len(), "{name}");
        for (r, d) in csv_rows.iter().zip(dets) {
            assert_eq!(r[0], img["file"].as_str().unwrap());
            assert_eq!(r[1], d["label"].as_str().unwrap());
            let score: f32 = r[2].parse().unwrap();
            assert_eq!(score, d["score"].as_f64().unwrap() as f32);
            let b: Vec<i64> = r[3..].iter().map(|v| v.parse().unwrap()).collect();
            assert_eq!(serde_json::to_value(b).unwrap(), d["box"]);
        }
    }
    assert_eq!(from_csv[odd].len(), 2);
}

/// On tests/fixtures/photos/ as it is: every image file of the folder in name order, nudenet's
/// boxes on each reference photo, the totals those of the listed boxes. Human mode prints a
/// line per image and the table.
#[test]
fn nudenet_on_the_photos_folder() {
    require_nudenet();
    let o = run(&[
        "judge",
        "tests/fixtures/photos/",
        "--judge",
        NUDENET,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json_of(&o);
    let mut files: Vec<String> = std::fs::read_dir(photos_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .filter(|n| [".png", ".jpg", ".jpeg"].iter().any(|x| n.ends_with(x)))
        .collect();
    files.sort();
    let images = doc["images"].as_array().unwrap();
    let listed: Vec<String> = images.iter().map(|i| name_of(&i["file"])).collect();
    assert_eq!(listed, files);
    let want = reference_detections();
    let (mut boxes, mut with_boxes, mut checked) = (0, 0, 0);
    for img in images {
        let name = name_of(&img["file"]);
        assert!(img["file"]
            .as_str()
            .unwrap()
            .starts_with("tests/fixtures/photos/"));
        if let Some(w) = want.get(&name) {
            assert_nudenets(&img["detections"], w, &name);
            checked += 1;
        }
        let n = img["detections"].as_array().unwrap().len();
        boxes += n;
        with_boxes += usize::from(n > 0);
    }
    assert_eq!(checked, 8);
    assert_eq!(doc["totals"]["preset"]["any"]["boxes"], boxes);
    assert_eq!(doc["totals"]["preset"]["any"]["images"], with_boxes);
    assert_eq!(doc["totals"]["images"], files.len());

    // Human mode on two files: one line per image on stdout, then the table.
    let o = run(&[
        "judge",
        "tests/fixtures/photos/camera.png",
        "tests/fixtures/photos/astronaut_portrait.png",
        "--judge",
        NUDENET,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "tests/fixtures/photos/camera.png: FACE_MALE 0.576 [182, 128, 84, 69]"
    );
    assert_eq!(
        lines[1],
        "tests/fixtures/photos/astronaut_portrait.png: FACE_FEMALE 0.786 [80, 81, 95, 97], \
         FEMALE_BREAST_COVERED 0.343 [22, 303, 111, 96]"
    );
    let row = |label: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no row {label} in {out}"));
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("FACE_FEMALE")[1..], ["1", "1", "1", "1"]);
    assert_eq!(row("FACE_MALE")[1..], ["1", "1", "0", "0"]);
    assert_eq!(row("nudity")[2..], ["0", "0", "0", "0"]);
    assert!(
        out.contains("score > 0.25") && out.contains("score >= 0.6"),
        "{out}"
    );
    assert_eq!(*lines.last().unwrap(), "2 images judged");
}

/// A corrupt file among the images is named and skipped, the others judged and written, and
/// the exit code is 1 with a last line counting the unreadable files.
#[test]
fn a_corrupt_file_is_named_skipped_and_fails_the_run() {
    require_nudenet();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    for f in ["camera.png", "astronaut_small.png"] {
        std::fs::copy(photos_dir().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("x.png"), b"\x89PNG garbage, not an image at all").unwrap();
    let csv_path = tmp.path().join("boxes.csv");
    let o = run(&[
        "judge",
        dir.to_str().unwrap(),
        "--judge",
        NUDENET,
        "--json",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let x = dir.join("x.png");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: ") && l.contains(x.to_str().unwrap())),
        "{err}"
    );
    assert_eq!(
        err.lines().last().unwrap(),
        "error: 1 of 3 files could not be read (named above); the other 2 were judged"
    );
    let doc = json_of(&o);
    let images = doc["images"].as_array().unwrap();
    let names: Vec<String> = images.iter().map(|i| name_of(&i["file"])).collect();
    assert_eq!(names, ["astronaut_small.png", "camera.png"]);
    let want = reference_detections();
    for (img, name) in images.iter().zip(&names) {
        assert_nudenets(&img["detections"], &want[name], name);
    }
    assert_eq!(doc["unreadable"][0]["file"], x.to_str().unwrap());
    assert_eq!(doc["totals"]["unreadable"], 1);
    assert_eq!(doc["totals"]["images"], 2);
    let rows = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
    assert_eq!(rows.len(), 3, "{rows:?}");

    // Human mode, and -q: the file is still named (an error), the summary says so.
    let o = run(&["judge", dir.to_str().unwrap(), "--judge", NUDENET, "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o).lines().count(), 2, "{}", stderr(&o));
}

/// Toy renders under the toy judge: the verdicts per image, counted per attribute; the CSV has
/// one row per image and a column per attribute; -q prints nothing.
#[test]
fn the_toy_judge_gives_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy");
    std::fs::create_dir(&dir).unwrap();
    let shows = [
        ("a_bob.png", Shows::Char(Character::Bob)),
        ("b_kiki.png", Shows::Char(Character::Kiki)),
        ("c_circle.png", Shows::Plain(Object::Circle, Colour::Yellow)),
    ];
    for (i, (file, s)) in shows.iter().enumerate() {
        let (img, _) = render(&common::scene(*s, i as u64));
        img.save(dir.join(file)).unwrap();
    }
    let csv_path = tmp.path().join("verdicts.csv");
    let o = run(&[
        "judge",
        dir.to_str().unwrap(),
        "--judge",
        "toy",
        "--json",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json_of(&o);
    assert_eq!(doc["judge"]["kind"], "toy");
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(images[0]["verdicts"]["character"], "bob");
    assert_eq!(images[1]["verdicts"]["character"], "kiki");
    let circle = &images[2]["verdicts"];
    assert_eq!(circle["object"], "circle");
    assert_eq!(circle["colour"], "yellow");
    assert_eq!(circle["character"], "none");
    assert!(images.iter().all(|i| i.get("detections").is_none()));
    let v = &doc["totals"]["verdicts"];
    assert_eq!(v["character"]["labels"]["bob"], 1);
    assert_eq!(v["character"]["labels"]["kiki"], 1);
    assert_eq!(v["character"]["labels"]["none"], 1);
    for attr in ["object", "colour", "style", "character"] {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        let mut unsure = 0;
        for i in images {
            match i["verdicts"][attr].as_str() {
                Some(l) => *want.entry(l.to_string()).or_default() += 1,
                None => unsure += 1,
            }
        }
        assert_eq!(
            v[attr]["labels"],
            serde_json::to_value(want).unwrap(),
            "{attr}"
        );
        assert_eq!(v[attr]["unsure"], unsure, "{attr}");
    }

    let rows = parse_csv(&std::fs::read_to_string(&csv_path).unwrap());
    assert_eq!(
        rows[0],
        [
            "file",
            "character",
            "colour",
            "object",
            "style",
            "description"
        ]
    );
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1][1], "bob");
    assert_eq!(rows[3][2..4], ["yellow", "circle"]);
    assert_eq!(rows[3][5], images[2]["description"].as_str().unwrap());

    // Human mode: a line per image, then images per attribute and label.
    let o = run(&["judge", dir.to_str().unwrap(), "--judge", "toy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.lines().next().unwrap().contains("a_bob.png: "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["character", "bob", "1"]),
        "{out}"
    );
    assert!(out.ends_with("3 images judged\n"), "{out}");

    // -q: nothing at all.
    let o = run(&["judge", dir.to_str().unwrap(), "--judge", "toy", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "");
}

/// The CLIP judge with zero-shot labels from the command line.
#[test]
fn the_clip_judge_takes_labels() {
    let o = run(&[
        "judge",
        "tests/fixtures/clip-tiny/images",
        "--judge",
        "clip:tests/fixtures/clip-tiny",
        "--label",
        "cat",
        "--label",
        "dog",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json_of(&o);
    assert_eq!(doc["judge"]["kind"], "clip");
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for img in images {
        let v = img["verdicts"].as_object().unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["label"]);
        assert!(v["label"].is_null() || ["cat", "dog"].contains(&v["label"].as_str().unwrap()));
    }
    // --label is for clip judges only.
    let o = run(&[
        "judge",
        "tests/fixtures/clip-tiny/images",
        "--judge",
        "toy",
        "--label",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--label"), "{}", stderr(&o));
}

/// A path that does not exist, or a folder without images, is an error naming it; a bad flag
/// is a command-line error.
#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder");
    let o = run(&[
        "judge",
        "tests/fixtures/photos/camera.png",
        missing.to_str().unwrap(),
        "--judge",
        "toy",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let o = run(&["judge", tmp.path().to_str().unwrap(), "--judge", "toy"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no images"), "{}", stderr(&o));

    for bad in [
        vec!["judge", "--judge", "toy"],
        vec!["judge", "x.png", "--judge", "resnet"],
        vec!["judge", "x.png", "--judge", "toy", "--min-score", "nan"],
    ] {
        let o = run(&bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
}
