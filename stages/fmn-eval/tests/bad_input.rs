//! Bad input: a clear error naming what does not match, a non-zero exit, no report.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::{run, sample_dir, stderr, Shows};
use fmn_toy_world::Character::*;
use std::path::Path;

fn setup(root: &Path, after_seed: u64, suite: &str) {
    let b = Shows::Char(Bob);
    sample_dir(
        &root.join("before"),
        &[
            ("a photo of bob", vec![(0, b), (1, b)]),
            ("a photo of kiki", vec![(0, Shows::Char(Kiki))]),
        ],
    );
    sample_dir(
        &root.join("after"),
        &[
            ("a photo of bob", vec![(0, b), (after_seed, b)]),
            ("a photo of kiki", vec![(0, Shows::Char(Kiki))]),
        ],
    );
    std::fs::write(root.join("suite.yaml"), suite).unwrap();
}

const GOOD: &str = "concepts:\n  - name: bob\n    erased: [{prompt: a photo of bob, expect: {character: bob}}]\n    preserved: [{prompt: a photo of kiki, expect: {character: kiki}}]\n";

fn eval(root: &Path, judge: &str) -> (bool, String) {
    let o = common::eval_root(root, judge, &[]);
    assert!(!root.join("report").exists() || o.status.success());
    (o.status.success(), stderr(&o))
}

fn fails_with(root: &Path, judge: &str, needles: &[&str]) {
    let (ok, err) = eval(root, judge);
    assert!(!ok, "should fail");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn good_input_works() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 1, GOOD);
    let (ok, err) = eval(tmp.path(), "toy");
    assert!(ok, "{err}");
}

#[test]
fn unpaired_seeds_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 7, GOOD);
    fails_with(
        tmp.path(),
        "toy",
        &["do not pair up", "\"a photo of bob\" seed 1", "before"],
    );
}

#[test]
fn a_suite_prompt_that_was_not_sampled_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    setup(
        tmp.path(),
        1,
        &GOOD.replace("a photo of kiki", "a photo of a red square"),
    );
    fails_with(
        tmp.path(),
        "toy",
        &[
            "concept `bob`",
            "preserved prompt \"a photo of a red square\" was not sampled",
        ],
    );
}

#[test]
fn a_concept_its_prompts_do_not_mention_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 1, &GOOD.replace("name: bob", "name: zorp"));
    fails_with(
        tmp.path(),
        "toy",
        &["concept `zorp`", "does not mention it"],
    );
}

#[test]
fn bad_expectations_and_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    setup(
        tmp.path(),
        1,
        &GOOD.replace("character: kiki", "colour: purple"),
    );
    fails_with(tmp.path(), "toy", &["`colour: purple` is not a toy label"]);
    setup(tmp.path(), 1, &GOOD.replace("erased:", "erassed:"));
    fails_with(tmp.path(), "toy", &["suite.yaml", "erassed"]);
}

#[test]
fn judges_that_do_not_load_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 1, GOOD);
    let preset = tmp.path().join("missing.yaml");
    fails_with(
        tmp.path(),
        &format!("onnx:{}", preset.display()),
        &["missing.yaml"],
    );
    let (ok, err) = eval(tmp.path(), "resnet");
    assert!(!ok);
    assert!(err.contains("unknown judge `resnet`"), "{err}");
    fails_with(
        tmp.path(),
        "clip:/nowhere",
        &["clip:/nowhere", "config.json"],
    );
}

#[test]
fn missing_options_and_unknown_config_keys_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["--judge", "toy"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--before is required"),
        "{}",
        stderr(&o)
    );
    let cfg = tmp.path().join("eval.yaml");
    std::fs::write(&cfg, "before: x\njudges: toy\n").unwrap();
    let o = run(&["--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("judges"), "{}", stderr(&o));
}

#[test]
fn the_toy_suite_loads_and_fits_the_toy_judge() {
    use fmn_eval::judge::{Judge, ToyJudge};
    let suite =
        fmn_eval::suite::Suite::load(&common::repo_root().join("configs/eval/toy.yaml")).unwrap();
    let judge = ToyJudge::load().unwrap();
    let names: Vec<&str> = suite.concepts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["bob", "kiki", "circle", "stripes"]);
    for c in &suite.concepts {
        for g in fmn_eval::suite::Group::ALL {
            for p in c.group(g) {
                judge
                    .check_expect(&p.expect)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.prompt));
            }
        }
    }
}

#[test]
fn every_shipped_suite_is_valid() {
    let dir = common::repo_root().join("configs/eval");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            fmn_eval::suite::Suite::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert_eq!(n, 5);
}

#[test]
fn a_config_file_supplies_options_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 1, GOOD);
    let r = tmp.path().to_str().unwrap();
    let cfg = tmp.path().join("eval.yaml");
    std::fs::write(
        &cfg,
        format!("before: {r}/before\nafter: {r}/after\nsuite: {r}/suite.yaml\njudge: toy\nout: {r}/from-config\nshard: 0/1\n"),
    )
    .unwrap();
    let o = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        &format!("{r}/from-flag"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tmp.path().join("from-flag/metrics.json").is_file());
    assert!(!tmp.path().join("from-config").exists());
    assert!(
        common::stdout(&o).starts_with("bob: Acc_e 1.00 -> 1.00 (forgetting 0.00)"),
        "{}",
        common::stdout(&o)
    );
}

#[test]
fn the_toy_prompt_file_lists_the_toy_suite_prompts() {
    let root = common::repo_root();
    let suite = fmn_eval::suite::Suite::load(&root.join("configs/eval/toy.yaml")).unwrap();
    let text = std::fs::read_to_string(root.join("configs/eval/toy-prompts.txt")).unwrap();
    let file: Vec<&str> = text.lines().collect();
    assert_eq!(file, suite.prompts());
}

/// The pre-flight memory check reads the image headers: 3 pairs of 64×64 toy images (the
/// chunk's 6 images as RGB8, 72 KiB, plus one pair's two grey f64 planes, 64 KiB) do not fit
/// in 100 KiB, and fit in 1 MiB.
#[test]
fn images_that_cannot_fit_in_memory_are_refused_before_judging() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), 1, GOOD);
    let o = common::eval_root(tmp.path(), "toy", &["--max-memory", "100K"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("judging the image pairs") && err.contains("needs an estimated 136 KiB"),
        "{err}"
    );
    assert!(!tmp.path().join("report").exists());
    let o = common::eval_root(tmp.path(), "toy", &["--max-memory", "1M"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
