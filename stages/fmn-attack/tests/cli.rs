//! fmn-attack on the real binary and the toy model: the folder and report it writes (the
//! verdicts checked against the toy judge on the written images), resuming after a kill, and
//! bad input.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::judge::Label;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attack_cmd(images: &Path, out: &Path, args: &[&str]) -> Command {
    concept_attack_cmd("bob", images, out, args)
}

fn concept_attack_cmd(concept: &str, images: &Path, out: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmn-attack"));
    cmd.args(["--concept", concept, "--images"])
        .arg(images)
        .args([
            "--samples",
            "2",
            "--quiet",
            "--json",
            "--method",
            "inversion",
        ])
        .args(args)
        .arg("--out")
        .arg(out);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

use fmn_testkit::json_of as ok;

fn failed(res: &Output) -> String {
    assert_eq!(
        res.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stderr).into_owned()
}

fn images(tmp: &Path) -> PathBuf {
    fmn_testkit::write_training_images(tmp, 2, 32).0
}

#[test]
fn an_attack_writes_embeddings_images_and_verdicts_that_the_judge_confirms() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("attack");
    let doc = ok(&run(&mut attack_cmd(
        &images(tmp.path()),
        &out,
        &[
            "--steps",
            "4",
            "--tokens",
            "1,2",
            "--init",
            "random,word",
            "--prompt",
            "a photo of {}",
            "--prompt",
            "{}",
        ],
    )));
    assert_eq!(
        doc,
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(out.join("attack.json")).unwrap()
        )
        .unwrap()
    );
    assert_eq!(doc["baseline"], true);
    assert_eq!(doc["expect"], serde_json::json!({"character": "bob"}));
    let attacks = doc["attacks"].as_array().unwrap();
    let names: Vec<&str> = attacks
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["k1-random-s0", "k1-word-s0", "k2-random-s0", "k2-word-s0"]
    );
    let judge = fmn_toy_world::Judge::load_default().unwrap();
    let (mut hits, mut total) = (0, 0);
    for a in attacks {
        let name = a["name"].as_str().unwrap();
        let tokens = a["tokens"].as_u64().unwrap() as usize;
        let emb = fmn_sd_embedding_tokens(&out.join(name).join("embedding.safetensors"));
        assert_eq!(emb, tokens, "{name}");
        let imgs = a["images"].as_array().unwrap();
        assert_eq!(imgs.len(), 2 * 2, "{name}: 2 prompts x 2 samples");
        let mut a_hits = 0;
        for im in imgs {
            let png = image::open(out.join(name).join(im["file"].as_str().unwrap()))
                .unwrap()
                .to_rgb8();
            let v = judge.judge(&png).unwrap();
            let character = v
                .character
                .sure
                .then(|| v.character.best.label_word().to_string());
            assert_eq!(
                im["labels"]["character"].as_str().map(str::to_string),
                character,
                "{name}"
            );
            let concept = character.as_deref() == Some("bob");
            assert_eq!(im["concept"], concept);
            a_hits += concept as usize;
            assert!(im["prompt"]
                .as_str()
                .unwrap()
                .contains(&format!("<{name}-1>")));
        }
        assert_eq!(a["judged_concept"], a_hits);
        assert!((a["rate"].as_f64().unwrap() - a_hits as f64 / 4.0).abs() < 1e-12);
        hits += a_hits;
        total += 4;
    }
    assert!((doc["asr"].as_f64().unwrap() - hits as f64 / total as f64).abs() < 1e-12);
    let best = attacks
        .iter()
        .map(|a| a["rate"].as_f64().unwrap())
        .fold(-1.0, f64::max);
    assert_eq!(doc["strongest"]["rate"].as_f64().unwrap(), best);
    // Nothing left beside the output.
    assert!(!tmp.path().join("attack.ckpt").exists());
}

/// A safetensors file's header (parsed: its key order is not part of the format) and data.
fn embedding_parts(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// The number of token rows an embedding file holds (one tensor per token).
fn fmn_sd_embedding_tokens(path: &Path) -> usize {
    let (header, _) = embedding_parts(path);
    header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .count()
}

#[test]
fn a_killed_attack_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(tmp.path());
    let args = ["--steps", "12", "--checkpoint-every", "3", "--tokens", "1"];
    let whole = tmp.path().join("whole");
    let expected = ok(&run(&mut attack_cmd(&imgs, &whole, &args)));

    let out = tmp.path().join("killed");
    // Killed inside the second attack's inversion: the first is finished in OUT.ckpt/.
    let progress = tmp.path().join("killed.ckpt/k1-word-s0.ckpt/progress.json");
    let killed = fmn_testkit::kill_when(
        attack_cmd(&imgs, &out, &args),
        &progress,
        &out,
        |p| p["step"].as_u64().is_some_and(|s| s >= 6),
        0,
    );
    assert!(matches!(killed, fmn_testkit::Killed::Midway));
    assert!(tmp
        .path()
        .join("killed.ckpt/k1-random-s0/result.json")
        .exists());
    let mut resumed_args = args.to_vec();
    resumed_args.push("--resume");
    let resumed = ok(&run(&mut attack_cmd(&imgs, &out, &resumed_args)));
    for (a, b) in resumed["attacks"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["attacks"].as_array().unwrap())
    {
        // (Not `final_loss`: the mean over the last steps this process ran.)
        for key in ["name", "images", "token_text", "rate"] {
            assert_eq!(a[key], b[key], "{key}");
        }
        let name = a["name"].as_str().unwrap();
        let (got, want) = (
            embedding_parts(&out.join(name).join("embedding.safetensors")),
            embedding_parts(&whole.join(name).join("embedding.safetensors")),
        );
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(resumed["asr"], expected["asr"]);
}

#[test]
fn bad_input_is_refused_with_the_setting_named_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(tmp.path());
    let out = tmp.path().join("a");
    let err = failed(&run(&mut attack_cmd(&imgs, &out, &["--steps", "0"])));
    assert!(err.contains("`steps` must be at least 1"), "{err}");
    let err = failed(&run(&mut attack_cmd(&imgs, &out, &["--prompt", "a photo"])));
    assert!(err.contains("exactly one {}"), "{err}");
    let err = failed(&run(&mut attack_cmd(
        &imgs,
        &out,
        &["--expect", "character"],
    )));
    assert!(err.contains("ATTRIBUTE=LABEL"), "{err}");
    let err = failed(&run(&mut attack_cmd(
        &imgs,
        &out,
        &["--expect", "character=alice"],
    )));
    assert!(err.contains("alice"), "{err}");
    // stripes is no toy label: the judge's word for it must be given.
    let err = failed(&run(&mut concept_attack_cmd("stripes", &imgs, &out, &[])));
    assert!(err.contains("--expect ATTRIBUTE=LABEL"), "{err}");
    // A patch of another model.
    let patch = fmn_testkit::fixtures().join("patch/sd1-tiny-forget.safetensors");
    let mut cmd = attack_cmd(&imgs, &out, &[]);
    cmd.arg("--patch").arg(&patch);
    let err = failed(&run(&mut cmd));
    assert!(err.contains("cannot apply the patches"), "{err}");
    // Over the memory budget: an inversion is refused for its training step, a search alone
    // (no inversion) for its sampling.
    let err = failed(&run(&mut attack_cmd(&imgs, &out, &["--max-memory", "1M"])));
    assert!(err.contains("attack (inversion)"), "{err}");
    let search = |limit: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmn-attack"));
        cmd.args(["--concept", "bob", "--method", "search", "--samples", "3"])
            .args(["--max-memory", limit, "--quiet", "--out"])
            .arg(&out);
        failed(&run(&mut cmd))
    };
    let err = search("1M");
    assert!(
        err.contains("attack sampling 3 image(s)") && !err.contains("inversion"),
        "{err}"
    );
    // On the toy model the search's scoring pass (32 prompts' keys and values through every
    // attn2) needs more than sampling 3 images: a limit just above the sampling's estimate
    // refuses the search.
    let mib = |err: &str| -> u64 {
        let tail = err.split("needs an estimated ").nth(1).expect(err);
        tail.split(" MiB").next().unwrap().parse().expect(err)
    };
    let sampling = mib(&err);
    let err = search(&format!("{}M", sampling + 1));
    assert!(
        err.contains("attack (prompt search) scoring 32 prompts") && mib(&err) > sampling + 1,
        "{err}"
    );
    assert!(!out.exists());
    assert!(!tmp.path().join("a.ckpt").exists());
}

#[test]
fn nearest_starts_from_the_vocabulary_tokens_closest_to_the_name() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    let doc = ok(&run(&mut attack_cmd(
        &images(tmp.path()),
        &out,
        &["--init", "nearest", "--tokens", "2", "--steps", "2"],
    )));
    let got: Vec<u32> = doc["attacks"][0]["initializers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    // By hand: cosine of every row of the toy model's token table with bob's row.
    let sd = fmn_sd::sample::pipeline::StableDiffusion::load(
        &fmn_core::default_model_dir(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let rows: Vec<Vec<f32>> = sd.text_encoder.token_embedding_table().to_vec2().unwrap();
    let bob = sd.tokenizer.tokenize("bob").unwrap()[0] as usize;
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    };
    let mut best: Vec<(f32, usize)> = (0..rows.len())
        .filter(|&i| i != bob && i < 49406)
        .map(|i| (cos(&rows[i], &rows[bob]), i))
        .collect();
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(got, [best[0].1 as u32, best[1].1 as u32]);
    assert!(best[1].0 > best[2].0 - 1e-6);
}

#[test]
fn the_judge_is_checked_on_the_concepts_own_images() {
    let tmp = tempfile::tempdir().unwrap();
    let bob = tmp.path().join("bob");
    let concept = "bob".parse::<fmn_toy_world::Concept>().unwrap();
    fmn_toy_world::dataset::render_set(&bob, 4, 77, Some(concept), |_| {}).unwrap();
    let search = [
        "--method",
        "search",
        "--tokens",
        "1",
        "--search-rounds",
        "1",
        "--search-candidates",
        "4",
    ];
    let res = run(&mut attack_cmd(&bob, &tmp.path().join("a"), &search));
    let doc = ok(&res);
    // By hand: the toy judge on each render.
    let judge = fmn_toy_world::Judge::load_default().unwrap();
    let mut hits = 0;
    let mut n = 0;
    for entry in std::fs::read_dir(&bob).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "png") {
            let v = judge.judge(&image::open(&path).unwrap().to_rgb8()).unwrap();
            hits += (v.character.sure && v.character.best.label_word() == "bob") as usize;
            n += 1;
        }
    }
    assert_eq!(n, 4);
    assert!(hits >= 3, "the renders show bob: {hits}/4");
    assert_eq!(doc["reference"]["images"], 4);
    assert_eq!(doc["reference"]["judged_concept"], hits);

    // Images of something else: said on stderr (without --quiet), and recorded.
    let res = run(Command::new(env!("CARGO_BIN_EXE_fmn-attack"))
        .args(["--concept", "bob", "--samples", "1", "--json", "--images"])
        .arg(images(tmp.path()))
        .args(search)
        .arg("--out")
        .arg(tmp.path().join("b")));
    let doc = ok(&res);
    assert_eq!(doc["reference"]["judged_concept"], 0);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("calls only 0 of the 2 images"), "{err}");
}
