//! End to end on the shipped toy model: `pipelines/forget.sh` chains the real binaries
//! (render -> segment -> invert -> re-steer -> sample before/after -> eval) with few steps, in
//! a folder whose path has a space, and every file one stage hands the next is checked.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_e2e::{bin, bin_dir, read_json, repo_root};
use std::path::Path;
use std::process::Command;

fn tensor_names(path: &Path) -> (Vec<String>, std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    (names, meta.metadata().clone().unwrap_or_default())
}

#[test]
fn forget_sh_runs_every_stage_and_each_output_is_what_the_next_reads() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("with space");
    let images = work.join("bob images");
    let out = work.join("forget bob");

    // render: images, captions, exact masks, manifest
    let res = Command::new(bin("fmn-toy"))
        .args([
            "render", "--count", "3", "--seed", "5", "--only", "bob", "--quiet", "--out",
        ])
        .arg(&images)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(
        read_json(&images.join("manifest.json"))["images"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let invert_cfg = work.join("invert.yaml");
    std::fs::write(
        &invert_cfg,
        std::fs::read_to_string(root.join("configs/invert/toy.yaml"))
            .unwrap()
            .replace("max_train_steps_ti: 500", "max_train_steps_ti: 4"),
    )
    .unwrap();
    let resteer_cfg = work.join("resteer.yaml");
    let resteer_text = std::fs::read_to_string(root.join("configs/resteer/toy.yaml")).unwrap();
    assert!(resteer_text.contains("max_train_steps:"));
    let resteer_text = resteer_text
        .lines()
        .map(|l| {
            if l.starts_with("max_train_steps:") {
                "max_train_steps: 3"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&resteer_cfg, resteer_text).unwrap();

    // forget.sh with few steps; every step skips its output when it exists.
    let forget_sh = || {
        let mut cmd = Command::new(root.join("pipelines/forget.sh"));
        cmd.current_dir(&root)
            .args(["bob", "object"])
            .arg(&images)
            .arg(&out)
            .env("BIN", bin_dir())
            .env("INVERT_CONFIG", &invert_cfg)
            .env("RESTEER_CONFIG", &resteer_cfg)
            .env("PROMPTS", root.join("configs/eval/toy-bob-prompts.txt"))
            .env("SUITE", root.join("configs/eval/toy-bob.yaml"))
            .env("SEEDS", "1")
            .env("SAMPLE_STEPS", "4");
        cmd
    };
    let run = forget_sh().output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "forget.sh failed:\n{stderr}");

    // segment -> masks/NAME.png per image, of the image's size (what invert/re-steer read)
    let seg = read_json(&out.join("masks/manifest.json"));
    assert_eq!(seg["count"], 3);
    assert_eq!(seg["failed"], 0);
    for i in 0..3 {
        let name = format!("{i:05}.png");
        let img = image::open(images.join(&name)).unwrap();
        let mask = image::open(out.join("masks").join(&name)).unwrap();
        assert_eq!((img.width(), img.height()), (mask.width(), mask.height()));
    }

    // invert -> one tensor per placeholder token, with the fmn metadata
    let (names, meta) = tensor_names(&out.join("embedding.safetensors"));
    assert_eq!(names, ["<t1>", "<t2>"]);
    assert_eq!(meta["format"], "fmn-embedding/1");
    assert_eq!(meta["text_width"], "64");

    // re-steer -> a patch naming the concept, whose settings record the embedding
    let inspect = Command::new(bin("fmn-patch"))
        .arg("inspect")
        .arg(out.join("patch.safetensors"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let patch: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(patch["concepts"][0]["name"], "bob");
    let (_, pmeta) = tensor_names(&out.join("patch.safetensors"));
    assert!(
        pmeta["settings"].contains("embedding.safetensors"),
        "{}",
        pmeta["settings"]
    );

    // sample -> 9 prompts × 1 seed, same seeds before and after, the patch recorded
    let before = read_json(&out.join("before/manifest.json"));
    let after = read_json(&out.join("after/manifest.json"));
    assert_eq!(before["images"].as_array().unwrap().len(), 9);
    assert_eq!(before["prompts"], after["prompts"]);
    assert_eq!(
        after["patches"][0],
        out.join("patch.safetensors").display().to_string()
    );
    assert!(out.join("after.attention.safetensors").is_file());

    // eval -> metrics for bob and a report
    let metrics = read_json(&out.join("report/metrics.json"));
    let bob = &metrics["concepts"][0];
    assert_eq!(bob["concept"], "bob");
    assert_eq!(bob["images"]["erased"], 2);
    assert!(bob["acc_e"]["before"].is_number() && bob["acc_s"]["after"].is_number());
    assert!(bob["attention_share"]["after"].is_number());
    assert!(out.join("report/report.html").is_file());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("bob") && stdout.contains("report.html"),
        "{stdout}"
    );

    // A rerun finds every output and redoes nothing.
    let again = forget_sh().output().unwrap();
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !stderr.contains("== invert") && !stderr.contains("== sample"),
        "{stderr}"
    );
}
