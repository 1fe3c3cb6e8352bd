//! `fmn-invert` end to end on the tiny SD1 fixture: the file holds only the new tokens with
//! their metadata and the model is untouched; bad input fails
//! before training and writes nothing; a killed run resumes to the same embedding.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device};
use fmn_sd::io::embedding::TokenEmbedding;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model() -> PathBuf {
    fmn_testkit::fixtures().join("sd1-tiny")
}

fn images(dir: &Path, n: u32, size: u32) -> (PathBuf, PathBuf) {
    fmn_testkit::write_training_images(dir, n, size)
}

fn invert(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmn-invert"));
    cmd.arg("--model").arg(model()).arg("--quiet").args(args);
    for (flag, p) in paths {
        cmd.arg(flag).arg(p);
    }
    cmd.output().unwrap()
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn writes_only_the_new_tokens_and_leaves_the_model_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, masks) = images(tmp.path(), 3, 32);
    let te_file = model().join("text_encoder/model.safetensors");
    let before = digest(&te_file);
    let out = tmp.path().join("my concept.safetensors");
    let res = invert(
        &[
            "--tokens",
            "<s1> <s2>",
            "--init",
            "dog|<rand-0.017>",
            "--kind",
            "object",
            "--steps",
            "6",
            "--lr",
            "0.01",
            "--seed",
            "3",
            "--json",
        ],
        &[("--images", &img), ("--masks", &masks), ("--out", &out)],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(summary["report"]["steps"], 6);
    assert_eq!(
        digest(&te_file),
        before,
        "the model's files are not modified"
    );

    let raw = fmn_sd::io::weights::load_tensors(&out, DType::F32, &Device::Cpu).unwrap();
    let mut keys: Vec<_> = raw.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["<s1>", "<s2>"],
        "one tensor per placeholder token, nothing else"
    );
    assert_eq!(raw["<s1>"].dims(), &[32]);
    let e = TokenEmbedding::load(&out).unwrap();
    assert_eq!(e.meta.initializers, ["dog", "<rand-0.017>"]);
    assert!(e.meta.base_fingerprint.is_some());
    assert_eq!(e.meta.settings["max_train_steps_ti"], 6);
    // clip_ti_decay pulls every norm toward 0.4 by min(1, 100·lr) = 1 at lr 0.01.
    let norms: Vec<f32> = e
        .vectors
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    for n in norms {
        assert!((n - 0.4).abs() < 1e-4, "norm {n}");
    }
    // The dog-initialised token trained away from dog's row (other rows are not in the file).
    let sd = fmn_sd::sample::pipeline::StableDiffusion::load(&model(), &Device::Cpu, DType::F32)
        .unwrap();
    let dog = sd.tokenizer.tokenize("dog").unwrap()[0] as usize;
    let dog_row = sd.text_encoder.token_embedding_table().get(dog).unwrap();
    let moved: f32 = (e.vectors.get(0).unwrap() - dog_row)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(moved > 1e-4);

    let a1111 = tmp.path().join("concept.safetensors");
    let res = invert(
        &["--tokens", "<s1> <s2>", "--steps", "2", "--a1111"],
        &[("--images", &img), ("--out", &a1111)],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let raw = fmn_sd::io::weights::load_tensors(&a1111, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(raw["emb_params"].dims(), &[2, 32]);
}

#[test]
fn bad_input_fails_before_training_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = images(tmp.path(), 2, 32);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("a.png"), b"not a png").unwrap();
    let (tiny, _) = images(&tmp.path().join("tiny"), 1, 8);
    let out = tmp.path().join("e.safetensors");
    let cases: Vec<(Vec<&str>, &Path, &str)> = vec![
        (vec!["--tokens", "photo"], &img, "already in the vocabulary"),
        (
            vec!["--tokens", "<s1>", "--init", "yellow circle"],
            &img,
            "must be one token",
        ),
        (
            vec!["--tokens", "<s1> <s2> <s3>", "--init", "dog|cat"],
            &img,
            "3 placeholder tokens but 2",
        ),
        (vec!["--tokens", "<s1> <s1>"], &img, "given twice"),
        (vec!["--tokens", "<s1>"], &empty, "empty"),
        (vec!["--tokens", "<s1>"], &corrupt, "a.png"),
        (vec!["--tokens", "<s1>"], &tiny, "too small"),
        (
            vec!["--tokens", "<s1>", "--init", "<rand-1e30>", "--lr", "1e30"],
            &img,
            "nothing was written",
        ),
    ];
    for (args, images, expect) in cases {
        let mut a = args.clone();
        a.extend(["--steps", "3"]);
        let res = invert(&a, &[("--images", images), ("--out", &out)]);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} should fail");
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = images(tmp.path(), 2, 32);
    let args = ["--tokens", "<s1> <s2>", "--steps", "40", "--lr", "0.005"];
    let full = tmp.path().join("full.safetensors");
    let res = invert(&args, &[("--images", &img), ("--out", &full)]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );

    let resumed = tmp.path().join("resumed.safetensors");
    let ckpt = tmp.path().join("resumed.safetensors.ckpt/progress.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmn-invert"));
    cmd.arg("--model")
        .arg(model())
        .args(["--quiet", "--checkpoint-every", "5"])
        .args(args)
        .arg("--images")
        .arg(&img)
        .arg("--out")
        .arg(&resumed);
    assert_eq!(
        fmn_testkit::kill_at_random_step(cmd, &ckpt, &resumed, 40, 5),
        fmn_testkit::Killed::Midway,
        "the run finished before it was killed; raise --steps"
    );
    let res = invert(
        &[&args[..], &["--checkpoint-every", "5", "--resume"]].concat(),
        &[("--images", &img), ("--out", &resumed)],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let a = TokenEmbedding::load(&full)
        .unwrap()
        .vectors
        .to_vec2::<f32>()
        .unwrap();
    let b = TokenEmbedding::load(&resumed)
        .unwrap()
        .vectors
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b, "resumed run differs from the uninterrupted one");
    assert!(!tmp.path().join("resumed.safetensors.ckpt").exists());
}

/// The pre-flight memory check refuses a training resolution that cannot fit before any
/// weight or image is read, naming the request and the estimate.
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = images(tmp.path(), 2, 32);
    let out = tmp.path().join("e.safetensors");
    for (args, needle) in [
        (
            vec!["--resolution", "100000"],
            "inversion at 100000x100000, batch 1",
        ),
        (
            vec!["--max-memory", "2M"],
            "more than the --max-memory limit (2 MiB)",
        ),
    ] {
        let res = invert(&args, &[("--images", &img), ("--out", &out)]);
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains("needs an estimated"), "{stderr}");
        assert!(!out.exists());
    }
}
