//! The command-line conventions every stage follows, checked on the real binaries: `--help`
//! shows the shared option groups, a usage error exits 2, bad input exits 1 with one
//! `error:` message, and a successful run with `-q` prints nothing at all.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_e2e::{bin, repo_root};
use std::path::Path;
use std::process::{Command, Output};

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .env_remove("FMN_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit status 0 and not a byte on stdout or stderr.
fn assert_silent_success(what: &str, o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", text(o));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "{what} -q printed something: {}",
        text(o)
    );
}

/// Exit status 1 with an `error:` line naming `names`.
fn assert_error(what: &str, o: &Output, names: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains(names) && !err.contains("panicked"),
        "{what}: {}",
        text(o)
    );
}

/// `--help` exits 0 and shows `groups`; an unknown flag exits 2.
fn assert_help_and_usage(name: &str, sub: &[&str], groups: &[&str]) {
    let help = run(name, &[sub, &["--help"]].concat());
    assert_eq!(
        help.status.code(),
        Some(0),
        "{name} --help: {}",
        text(&help)
    );
    let out = String::from_utf8_lossy(&help.stdout);
    for g in groups {
        assert!(
            out.contains(&format!("{g}:")),
            "{name} {sub:?} --help has no `{g}` group:\n{out}"
        );
    }
    let usage = run(name, &[sub, &["--no-such-flag"]].concat());
    assert_eq!(usage.status.code(), Some(2), "{name}: {}", text(&usage));
}

fn sd1_tiny() -> String {
    repo_root()
        .join("tests/fixtures/sd1-tiny")
        .display()
        .to_string()
}

fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..2u32 {
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 60])
        })
        .save(dir.join(format!("{i}.png")))
        .unwrap();
    }
}

#[test]
fn every_stage_shows_the_shared_groups_and_exits_0_1_or_2() {
    for (name, sub, groups) in [
        (
            "fmn-sample",
            &[][..],
            &["Model", "Settings", "Device", "Output"][..],
        ),
        (
            "fmn-invert",
            &[],
            &["Model", "Settings", "Device", "Run control", "Output"],
        ),
        (
            "fmn-resteer",
            &[],
            &[
                "Model",
                "Concept",
                "Settings",
                "Device",
                "Run control",
                "Output",
            ],
        ),
        ("fmn-patch", &["apply"], &["Model", "Output"]),
        ("fmn-patch", &["inspect"], &["Output"]),
        ("fmn-eval", &[], &["Output"]),
        ("fmn-segment", &[], &["Output"]),
        ("fmn-toy", &["render"], &["Output"]),
        ("fmn-toy", &["quality"], &["Model", "Output"]),
    ] {
        assert_help_and_usage(name, sub, groups);
    }
}

#[test]
fn a_quiet_successful_run_prints_nothing_and_bad_input_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p).display().to_string();
    let model = sd1_tiny();
    write_images(&tmp.path().join("images"));
    let (images, embedding, patch) = (t("images"), t("e.safetensors"), t("p.safetensors"));

    // Sampling: before and after folders of one prompt.
    let sample = |out: &str, extra: &[&str]| {
        let args = [
            &[
                "--model",
                &model,
                "--prompt",
                "a photo of bob",
                "--steps",
                "1",
            ][..],
            extra,
            &["-q", "--out", out],
        ]
        .concat();
        run("fmn-sample", &args)
    };
    assert_silent_success("fmn-sample", &sample(&t("before"), &[]));
    assert_error(
        "fmn-sample without a prompt",
        &run("fmn-sample", &["--model", &model, "-q", "--out", &t("x")]),
        "--prompt",
    );

    // Inversion and re-steering: one step each.
    let common = ["--model", &model, "--steps", "1", "--images"];
    let invert = [
        &common[..],
        &[&images, "--tokens", "<s1>", "-q", "--out", &embedding],
    ]
    .concat();
    assert_silent_success("fmn-invert", &run("fmn-invert", &invert));
    assert_error(
        "fmn-invert with no images",
        &run(
            "fmn-invert",
            &[
                "--model",
                &model,
                "--images",
                &t("none"),
                "-q",
                "--out",
                &t("f.safetensors"),
            ],
        ),
        "none",
    );
    let cache = t("cache");
    let resteer = [
        &common[..],
        &[
            &images,
            "--concept",
            "bob",
            "--kind",
            "object",
            "--cache-dir",
            &cache,
            "-q",
            "--out",
            &patch,
        ],
    ]
    .concat();
    assert_silent_success("fmn-resteer", &run("fmn-resteer", &resteer));
    let bad_lr = [&resteer[..], &["--lr=-1"]].concat();
    assert_error(
        "fmn-resteer --lr -1",
        &run("fmn-resteer", &bad_lr),
        "learning_rate",
    );

    // The patch: inspect, and sampling with it.
    assert_silent_success(
        "fmn-patch inspect",
        &run("fmn-patch", &["inspect", &t("p.safetensors"), "-q"]),
    );
    assert_error(
        "fmn-patch inspect of an embedding",
        &run("fmn-patch", &["inspect", &t("e.safetensors"), "-q"]),
        "e.safetensors",
    );
    assert_silent_success(
        "fmn-sample --patch",
        &sample(&t("after"), &["--patch", &t("p.safetensors")]),
    );

    // Evaluation of the two folders with the toy judge.
    let suite = t("suite.yaml");
    std::fs::write(
        &suite,
        "concepts:\n  - name: bob\n    erased:\n      - prompt: a photo of bob\n        expect: {character: bob}\n",
    )
    .unwrap();
    let eval = |out: &str| {
        let (b, a) = (t("before"), t("after"));
        run(
            "fmn-eval",
            &[
                "--before", &b, "--after", &a, "--suite", &suite, "--judge", "toy", "-q", "--out",
                out,
            ],
        )
    };
    assert_silent_success("fmn-eval", &eval(&t("report")));
    std::fs::write(&suite, "concepts: [\n").unwrap();
    assert_error(
        "fmn-eval with a broken suite",
        &eval(&t("report2")),
        "suite.yaml",
    );

    // The toy world.
    assert_silent_success(
        "fmn-toy render",
        &run(
            "fmn-toy",
            &["render", "--count", "2", "-q", "--out", &t("renders")],
        ),
    );
    assert_error(
        "fmn-toy judge of a missing file",
        &run("fmn-toy", &["judge", "--images", &t("missing.png"), "-q"]),
        "missing.png",
    );
}

#[test]
fn fmn_segment_is_quiet_with_q_and_names_bad_input() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        panic!("ORT_DYLIB_PATH is not set: run the tests through scripts/test.sh");
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    write_images(&images);
    let (img, out) = (images.display().to_string(), tmp.path().join("masks"));
    let out = out.display().to_string();
    assert_silent_success(
        "fmn-segment",
        &run(
            "fmn-segment",
            &["--segmenter", "toy", "--images", &img, "-q", "--out", &out],
        ),
    );
    assert_error(
        "fmn-segment with an unknown preset",
        &run(
            "fmn-segment",
            &[
                "--segmenter",
                "no-such-preset",
                "--images",
                &img,
                "-q",
                "--out",
                &out,
            ],
        ),
        "no-such-preset",
    );
}

/// Without OpenBLAS the products run on the gemm crate at about half speed: a run says so once
/// on stderr (not with `-q`, not when `FMN_BLAS=none` chose it).
#[test]
fn a_run_without_openblas_says_its_products_are_slower() {
    let tmp = tempfile::tempdir().unwrap();
    let model = sd1_tiny();
    let system_has_openblas = Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("libopenblas.so.0"))
        .unwrap_or(false);
    let sample = |out: &str, blas: Option<&str>, quiet: bool| {
        let mut cmd = Command::new(bin("fmn-sample"));
        cmd.args([
            "--model",
            &model,
            "--prompt",
            "a photo of bob",
            "--steps",
            "1",
        ])
        .arg("--out")
        .arg(tmp.path().join(out))
        .env_remove("FMN_LOG")
        .env_remove("FMN_BLAS");
        if quiet {
            cmd.arg("-q");
        }
        if let Some(b) = blas {
            cmd.env("FMN_BLAS", b);
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{out}: {}", text(&o));
        String::from_utf8_lossy(&o.stderr)
            .matches("no OpenBLAS found")
            .count()
    };
    assert_eq!(
        sample("unset", None, false),
        usize::from(!system_has_openblas)
    );
    assert_eq!(sample("quiet", None, true), 0);
    assert_eq!(sample("none", Some("none"), false), 0);
}
