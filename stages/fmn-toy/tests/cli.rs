//! The real `fmn-toy` binary: render, then judge; bad input.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn fmn_toy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmn-toy"))
        .args(args)
        .output()
        .expect("run fmn-toy")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn render(out: &Path, count: usize, seed: u64, only: Option<&str>) -> Output {
    let (count, seed) = (count.to_string(), seed.to_string());
    let mut args = vec![
        "render",
        "--out",
        out.to_str().unwrap(),
        "--count",
        &count,
        "--seed",
        &seed,
        "--json",
    ];
    if let Some(o) = only {
        args.extend(["--only", o]);
    }
    fmn_toy(&args)
}

#[test]
fn render_then_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("set");
    let o = render(&out, 24, 31337, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["count"], 24);

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(images.len(), 24);
    assert_eq!(manifest["seed"], 31337);
    for (i, entry) in images.iter().enumerate() {
        let stem = format!("{i:05}");
        assert_eq!(entry["file"], format!("{stem}.png"));
        assert_eq!(entry["mask"], format!("masks/{stem}.png"));
        let caption = std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap();
        assert_eq!(entry["caption"], caption.as_str());
        let img = image::open(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        let mask = image::open(out.join("masks").join(format!("{stem}.png")))
            .unwrap()
            .to_luma8();
        assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
        assert!(mask.pixels().any(|p| p[0] == 255));
        for key in [
            "object",
            "colour",
            "striped",
            "character",
            "size",
            "centre",
            "rotation",
            "background",
        ] {
            assert!(entry.get(key).is_some(), "manifest entry lacks {key}");
        }
    }
    // No staging leftovers beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Same seed, same files.
    let again = tmp.path().join("again");
    assert!(render(&again, 24, 31337, None).status.success());
    for name in ["00000.png", "00023.png", "masks/00007.png", "00011.txt"] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(again.join(name)).unwrap(),
            "{name}"
        );
    }

    // Judge the folder (masks/ is not judged).
    let o = fmn_toy(&["judge", "--images", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let verdicts: Value = serde_json::from_slice(&o.stdout).unwrap();
    let judged = verdicts["images"].as_array().unwrap();
    assert_eq!(judged.len(), 24);
    let mut right = 0;
    for (entry, v) in images.iter().zip(judged) {
        assert!(v["file"]
            .as_str()
            .unwrap()
            .ends_with(entry["file"].as_str().unwrap()));
        assert_eq!(v["figure"], true);
        let striped = if entry["striped"] == true {
            "striped"
        } else {
            "plain"
        };
        let character = entry["character"].as_str().unwrap_or("none");
        for (key, want) in [
            ("object", entry["object"].as_str().unwrap()),
            ("colour", entry["colour"].as_str().unwrap()),
            ("striped", striped),
            ("character", character),
        ] {
            let conf = v[key]["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&conf));
            if v[key]["label"] == want {
                right += 1;
            }
        }
    }
    assert!(right >= 24 * 4 - 1, "{right}/96 attributes right");

    // Plain text output, single files.
    let o = fmn_toy(&[
        "judge",
        "--images",
        out.join("00000.png").to_str().unwrap(),
        out.join("00001.png").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
}

#[test]
fn only_bob() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bob");
    let o = render(&out, 6, 5, Some("bob"));
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["only"], "bob");
    for e in manifest["images"].as_array().unwrap() {
        assert_eq!(e["character"], "bob");
        assert!(e["caption"].as_str().unwrap().contains("bob"));
    }
    let o = fmn_toy(&["judge", "--images", out.to_str().unwrap(), "--json"]);
    let verdicts: Value = serde_json::from_slice(&o.stdout).unwrap();
    for v in verdicts["images"].as_array().unwrap() {
        assert_eq!(v["character"]["label"], "bob");
        assert_eq!(v["object"]["label"], "circle");
        assert_eq!(v["colour"]["label"], "yellow");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |o: Output, needle: &str| {
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    };

    let missing = tmp.path().join("missing.png");
    check(
        fmn_toy(&["judge", "--images", missing.to_str().unwrap()]),
        "missing.png",
    );

    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    check(
        fmn_toy(&["judge", "--images", text.to_str().unwrap()]),
        "notes.png",
    );

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    check(
        fmn_toy(&["judge", "--images", empty.to_str().unwrap()]),
        "empty",
    );

    let folder = tmp.path().join("mixed");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("broken.jpg"), [0xFF, 0xD8, 0x00]).unwrap();
    check(
        fmn_toy(&["judge", "--images", folder.to_str().unwrap()]),
        "broken.jpg",
    );

    check(
        fmn_toy(&[
            "judge",
            "--images",
            tmp.path().join("x").to_str().unwrap(),
            "--weights",
            "/nonexistent.safetensors",
        ]),
        "x",
    );
    let ok = tmp.path().join("ok");
    assert!(render(&ok, 2, 0, None).status.success());
    check(
        fmn_toy(&[
            "judge",
            "--images",
            ok.to_str().unwrap(),
            "--weights",
            text.to_str().unwrap(),
        ]),
        "notes.png",
    );

    // Rendering into a non-empty folder, an unknown concept, zero images.
    check(render(&ok, 2, 0, None), "not empty");
    check(
        render(&tmp.path().join("p"), 2, 0, Some("purple")),
        "purple",
    );
    check(render(&tmp.path().join("z"), 0, 0, None), "count");
    assert!(!tmp.path().join("z").exists());
}

/// The CLI convention on the real binary: the shared output group in `--help`, `-q` silent on
/// success, exit codes 0 / 1 / 2.
#[test]
fn quiet_help_and_exit_codes_follow_the_convention() {
    let tmp = tempfile::tempdir().unwrap();
    let help = fmn_toy(&["render", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in ["Output", "--json", "--quiet", "--verbose", "--out"] {
        assert!(
            text.contains(needle),
            "render --help lacks {needle}:\n{text}"
        );
    }
    let quality = String::from_utf8_lossy(&fmn_toy(&["quality", "--help"]).stdout).into_owned();
    assert!(
        quality.contains("Model") && quality.contains("--model"),
        "{quality}"
    );

    // -q: nothing at all on success; -o is --out.
    let out = tmp.path().join("q");
    let o = fmn_toy(&["-q", "render", "-o", out.to_str().unwrap(), "--count", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
    assert!(out.join("manifest.json").is_file());
    let o = fmn_toy(&["judge", "--images", out.to_str().unwrap(), "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");

    // Errors exit 1 with one message; usage errors exit 2.
    let o = fmn_toy(&["render", "-o", out.to_str().unwrap(), "--count", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
    assert_eq!(fmn_toy(&["render", "--count", "2"]).status.code(), Some(2));
    assert_eq!(fmn_toy(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(fmn_toy(&["judge"]).status.code(), Some(2));
}

/// `fmn-toy train-segmenter` with tiny settings writes the model and its record.
#[test]
fn train_segmenter_writes_the_model_and_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seg");
    let o = fmn_toy(&[
        "train-segmenter",
        "--renders",
        "8",
        "--holdout-renders",
        "4",
        "--steps",
        "2",
        "--batch",
        "2",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(record["training_images"], 8);
    assert_eq!(record["holdout_images"], 4);
    assert!(out.join("model.onnx").is_file());
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("train.json")).unwrap()).unwrap();
    assert_eq!(written["config"], record["config"]);
    // A folder without renders is an error naming it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = fmn_toy(&[
        "train-segmenter",
        "--data",
        empty.to_str().unwrap(),
        "-o",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
}
