//! `--shard I/N`: the shards together hold exactly the unsharded run's images, pixel for pixel
//! (DDIM is deterministic; up to float rounding), with the same file names and seeds, and each manifest records
//! its shard.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::Device;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn sample(out: &Path, extra: &[&str]) -> Value {
    let attn = out.with_extension("attn.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_fmn-sample"))
        .args(["--model", model().to_str().unwrap()])
        .args(["--prompt", "a photo of bob", "--prompt", "kiki"])
        .args([
            "--num-images",
            "3",
            "--steps",
            "2",
            "--seed",
            "5",
            "--quiet",
        ])
        .args([
            "--save-attention",
            attn.to_str().unwrap(),
            "--attention-steps",
            "1",
        ])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn shards_partition_the_unsharded_images() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = sample(&tmp.path().join("whole"), &[]);
    assert!(whole.get("shard").is_none());
    let whole_attn =
        candle_core::safetensors::load(tmp.path().join("whole.attn.safetensors"), &Device::Cpu)
            .unwrap();
    let mut seen = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("s{i}"));
        let m = sample(&dir, &["--shard", &format!("{i}/2")]);
        assert_eq!(m["shard"], serde_json::json!({"index": i, "count": 2}));
        let attn = candle_core::safetensors::load(
            tmp.path().join(format!("s{i}.attn.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        for (row, im) in m["images"].as_array().unwrap().iter().enumerate() {
            // item j = prompt × 3 + image goes to shard j mod 2
            let (p, k) = (
                im["prompt_index"].as_u64().unwrap(),
                im["image_index"].as_u64().unwrap(),
            );
            assert_eq!((p * 3 + k) % 2, i as u64, "{im}");
            assert_eq!(im["seed"].as_u64().unwrap(), 5 + k);
            let file = im["file"].as_str().unwrap();
            // Equal up to float rounding (a smaller batch sums in another order): at most one
            // 8-bit level apart.
            let a = image::open(dir.join(file)).unwrap().to_rgb8();
            let b = image::open(tmp.path().join("whole").join(file))
                .unwrap()
                .to_rgb8();
            let d = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(d <= 1, "{file}: pixels differ by {d}");
            // The attention rows follow the shard's manifest order.
            let whole_row = (p * 3 + k) as usize;
            for (name, t) in &attn {
                let a = t
                    .get(row)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let b = whole_attn[name]
                    .get(whole_row)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-4, "{name} row {row}: {d}");
            }
            seen.push(file.to_string());
        }
    }
    seen.sort();
    let mut all: Vec<String> = whole["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| im["file"].as_str().unwrap().to_string())
        .collect();
    all.sort();
    assert_eq!(seen, all);
    assert_eq!(all.len(), 6);
}

#[test]
fn a_bad_shard_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_fmn-sample"))
        .args([
            "--model",
            model().to_str().unwrap(),
            "--prompt",
            "bob",
            "--shard",
            "2/2",
        ])
        .args(["--out", tmp.path().join("o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad shard `2/2`: I must be less than N"),
        "{err}"
    );
}
