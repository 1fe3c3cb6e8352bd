//! Synthetic fmn-sample folders made of toy renders, and running the binary.
#![allow(dead_code)]
use fmn_toy_world::{render, scene_rng, Character, Colour, Concept, Object, Scene, SceneSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What an image shows.
#[derive(Debug, Clone, Copy)]
pub enum Shows {
    Char(Character),
    Plain(Object, Colour),
    Striped(Object, Colour),
}

pub fn scene(shows: Shows, seed: u64) -> Scene {
    let spec = match shows {
        Shows::Char(c) => SceneSpec::only(Concept::Character(c)),
        Shows::Plain(o, c) | Shows::Striped(o, c) => SceneSpec {
            object: Some(o),
            colour: Some(c),
            striped: Some(matches!(shows, Shows::Striped(..))),
            ..SceneSpec::default()
        },
    };
    Scene::random(&mut scene_rng(seed, 0), &spec)
}

/// Writes an fmn-sample-like folder: for each (prompt, [(seed, shows)]) the images
/// `p{i:03}_n{k:02}.png` and `manifest.json`.
pub fn sample_dir(dir: &Path, prompts: &[(&str, Vec<(u64, Shows)>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = Vec::new();
    for (pi, (prompt, imgs)) in prompts.iter().enumerate() {
        for (k, (seed, shows)) in imgs.iter().enumerate() {
            let file = format!("p{pi:03}_n{k:02}.png");
            let (img, _) = render(&scene(*shows, *seed));
            img.save(dir.join(&file)).unwrap();
            images.push(serde_json::json!({
                "file": file, "prompt_index": pi, "prompt": prompt,
                "image_index": k, "seed": seed,
            }));
        }
    }
    let manifest = serde_json::json!({
        "fmn_version": "test", "model": "tests/fixtures/sd1-tiny",
        "prompts": prompts.iter().map(|p| p.0).collect::<Vec<_>>(),
        "negative_prompt": "", "scheduler": "ddim", "steps": 1, "guidance": 1.0,
        "width": 64, "height": 64, "seed": 0, "num_images": 2, "init_latents": null,
        "images": images,
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmn-eval"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with a hint when ONNX Runtime is not set up (the onnx judge tests run it).
pub fn require_ort() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set: these tests run ONNX Runtime. \
         Run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` first."
    );
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Reads images as RGB.
pub fn read_images(dir: &Path, files: &[&str]) -> Vec<image::RgbImage> {
    files
        .iter()
        .map(|f| image::open(dir.join(f)).unwrap().to_rgb8())
        .collect()
}

/// Writes an fmn-sample-like folder of copies of `src` files: for each (prompt, files) the
/// images `p{i:03}_n{k:02}.png` (seed k) and `manifest.json`.
pub fn copied_sample_dir(dir: &Path, src: &Path, prompts: &[(&str, &[&str])]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = Vec::new();
    for (pi, (prompt, files)) in prompts.iter().enumerate() {
        for (k, file) in files.iter().enumerate() {
            let name = format!("p{pi:03}_n{k:02}.png");
            std::fs::copy(src.join(file), dir.join(&name)).unwrap();
            images.push(serde_json::json!({
                "file": name, "prompt_index": pi, "prompt": prompt, "image_index": k, "seed": k,
            }));
        }
    }
    let m = serde_json::json!({
        "model": "x",
        "prompts": prompts.iter().map(|p| p.0).collect::<Vec<_>>(),
        "images": images,
    });
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
}

/// Runs `fmn-eval --quiet` on `root/{before,after,suite.yaml}` with `judge`, writing
/// `root/report`, with `extra` flags after.
pub fn eval_root(root: &Path, judge: &str, extra: &[&str]) -> Output {
    let r = root.to_str().unwrap();
    let (before, after) = (format!("{r}/before"), format!("{r}/after"));
    let (suite, report) = (format!("{r}/suite.yaml"), format!("{r}/report"));
    let mut args = vec![
        "--before", &before, "--after", &after, "--suite", &suite, "--judge", judge, "--out",
        &report, "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// [`eval_root`] with `--json`, which must succeed; the metrics.
pub fn eval_json(root: &Path, judge: &str) -> serde_json::Value {
    let o = eval_root(root, judge, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}
