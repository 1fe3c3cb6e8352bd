//! The NudeNet preset's `input:` (configs/eval/judges/nudenet.yaml) against what nudenet 3.4.2
//! feeds its model, on the photos of tests/fixtures/photos/: the uint8 planes that
//! `cv2.dnn.blobFromImage` scales (sha256, per-plane sums, samples, and two whole blobs) and
//! the floats. Reference: tests/fixtures/nudenet-3.4.2-reference.{json,safetensors}, made by
//! tests/fixtures/gen/make_nudenet_fixture.py (spec: tests/fixtures/gen/NUDENET_3.4.2.md).
//! No model and no ONNX Runtime needed.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_onnx::{
    planes, prepare, prepare_pixels, ChannelOrder, Filter, InputSpec, Placement, ResizeMode,
    ValueRange, RECIPROCAL_255,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("nudenet-3.4.2-reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The `input:` of the shipped preset.
fn preset_input() -> InputSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/eval/judges/nudenet.yaml");
    let preset: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    serde_yaml::from_value(preset["input"].clone()).unwrap()
}

/// How fmn-eval reads an image (`image::open(..).to_rgb8()`): for these 8-bit PNGs what
/// `cv2.imread` gives, in RGB order (gray replicated, alpha dropped without compositing).
fn load(file: &str) -> image::RgbImage {
    image::open(fixtures().join(file)).unwrap().to_rgb8()
}

#[test]
fn the_preset_input_is_nudenets() {
    let s = preset_input();
    assert_eq!(s.size, [320, 320]);
    assert_eq!(s.resize, ResizeMode::PadSquare);
    assert_eq!(s.filter, Filter::OpencvLinear);
    assert_eq!(s.channels, ChannelOrder::Bgr);
    assert_eq!(s.range, ValueRange::UnitReciprocal);
    assert_eq!((s.mean, s.std, s.pad), ([0.0; 3], [1.0; 3], [0; 3]));
    assert_eq!(RECIPROCAL_255.to_bits(), 0x3b80_8081);
}

#[test]
fn prepared_planes_equal_nudenets_blobs() {
    let r = reference();
    let spec = preset_input();
    let blobs = std::fs::read(fixtures().join("nudenet-3.4.2-reference.safetensors")).unwrap();
    let blobs = safetensors::SafeTensors::deserialize(&blobs).unwrap();
    let photos = r["photos"].as_array().unwrap();
    assert!(photos.len() >= 5);
    let mut whole = 0;
    for p in photos {
        let name = p["name"].as_str().unwrap();
        let file = p["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            p["file_sha256"].as_str().unwrap(),
            "{name}: the photo is not the one the reference was made from"
        );
        let img = load(file);
        let (canvas, g) = prepare_pixels(&img, &spec);
        let m = p["padded_size"].as_u64().unwrap() as u32;
        assert_eq!((g.width, g.height), (img.width(), img.height()));
        assert_eq!(
            (
                u64::from(m - g.width),
                u64::from(m - g.height),
                u64::from(g.width)
            ),
            (
                p["x_pad"].as_u64().unwrap(),
                p["y_pad"].as_u64().unwrap(),
                p["width"].as_u64().unwrap()
            ),
            "{name}"
        );
        assert_eq!(
            g.placement,
            Placement::Crop {
                x: 0,
                y: 0,
                w: m,
                h: m
            }
        );
        let u8s = planes(&canvas, spec.channels);
        let sums: Vec<u64> = u8s
            .chunks(320 * 320)
            .map(|c| c.iter().map(|&v| u64::from(v)).sum())
            .collect();
        let want: Vec<u64> = p["blob"]["u8_plane_sums"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(sums, want, "{name}: plane sums (B, G, R)");
        assert_eq!(
            hex::encode(Sha256::digest(&u8s)),
            p["blob"]["u8_sha256"].as_str().unwrap(),
            "{name}: planes"
        );
        let (floats, _) = prepare(&img, &spec);
        let f32_sum: f64 = floats.iter().map(|&v| f64::from(v)).sum();
        let want_sum = p["blob"]["f32_sum"].as_f64().unwrap();
        assert!(
            (f32_sum - want_sum).abs() < 1e-6,
            "{name}: {f32_sum} vs {want_sum}"
        );
        for s in p["blob"]["samples"].as_array().unwrap() {
            let (c, y, x) = (
                s["c"].as_u64().unwrap() as usize,
                s["y"].as_u64().unwrap() as usize,
                s["x"].as_u64().unwrap() as usize,
            );
            let i = c * 320 * 320 + y * 320 + x;
            assert_eq!(u64::from(u8s[i]), s["u8"].as_u64().unwrap(), "{name} {s}");
            assert_eq!(floats[i], s["f32"].as_f64().unwrap() as f32, "{name} {s}");
            assert_eq!(floats[i], f32::from(u8s[i]) * RECIPROCAL_255, "{name} {s}");
        }
        if p["blob"]["u8_in_safetensors"].as_bool().unwrap() {
            let t = blobs.tensor(&format!("{name}.blob_u8")).unwrap();
            assert_eq!(t.shape(), &[3, 320, 320]);
            assert_eq!(t.data(), &u8s[..], "{name}: the whole blob");
            whole += 1;
        }
    }
    assert_eq!(whole, 2);
}
