//! Shared test helpers: the binary, the ONNX Runtime library, images and small ONNX models.
#![allow(dead_code)]
use fmn_toy::onnx::{self, ConvSpec, Dim, GraphBuilder};
use image::{GrayImage, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_fmn-segment");

/// The ONNX Runtime library from ORT_DYLIB_PATH; the runtime tests do not skip without it.
pub fn ort_lib() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "ORT_DYLIB_PATH is not set: these tests run the model through ONNX Runtime. \
             Run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` first."
        ),
    }
}

/// Runs the binary with ORT_DYLIB_PATH set (from the test environment).
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("ORT_DYLIB_PATH", ort_lib())
        .output()
        .expect("run fmn-segment");
    check_no_panic(&out);
    out
}

/// Runs the binary with the given ORT_DYLIB_PATH (None: unset).
pub fn run_with_ort(args: &[&str], ort: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("ORT_DYLIB_PATH");
    if let Some(o) = ort {
        cmd.env("ORT_DYLIB_PATH", o);
    }
    let out = cmd.output().expect("run fmn-segment");
    check_no_panic(&out);
    out
}

pub fn check_no_panic(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "fmn-segment panicked:\n{err}");
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A toy-like picture: a disc of `colour` on a light background, and its exact mask.
pub fn disc(size: u32, cx: f32, cy: f32, r: f32, colour: [u8; 3]) -> (RgbImage, GrayImage) {
    let mut img = RgbImage::from_pixel(size, size, Rgb([236, 232, 224]));
    let mut mask = GrayImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if dx * dx + dy * dy <= r * r {
                img.put_pixel(x, y, Rgb(colour));
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
    }
    (img, mask)
}

/// The shipped toy preset.
pub fn toy_preset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/segment/toy.yaml")
}

/// Writes an ONNX model: input `x` `[N, 3, size, size]`, a 1×1 convolution with `weight`
/// (`[c_out, 3]`) and `bias`, then `post` ("sigmoid" or ""), output `y`.
pub fn conv1x1_model(
    path: &Path,
    size: i64,
    batch: Dim,
    weight: &[f32],
    bias: &[f32],
    sigmoid: bool,
) {
    let c_out = bias.len() as i64;
    let mut g = GraphBuilder::new("test");
    let x = g.input("x", &[batch.clone(), 3.into(), size.into(), size.into()]);
    let c = g.conv(
        "c",
        &x,
        (&[c_out, 3, 1, 1], weight),
        Some(bias),
        ConvSpec::default(),
    );
    let out = if sigmoid { g.sigmoid(&c) } else { c };
    g.node_into("Identity", &[&out], "y", &[]);
    g.output("y", &[batch, c_out.into(), size.into(), size.into()]);
    let bytes = onnx::encode(&g.finish("test model", &[]));
    std::fs::write(path, bytes).unwrap();
}

/// Writes a preset YAML for `model` with the given `input`, `output` and `post` blocks.
pub fn preset(
    dir: &Path,
    name: &str,
    model: &Path,
    input: &str,
    output: &str,
    post: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "name: {name}\nmodel: {}\ninput:\n{input}\noutput:\n{output}\npost:\n{post}\n",
        model.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub fn read_gray(path: &Path) -> GrayImage {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        img.color(),
        image::ColorType::L8,
        "{} is not 8-bit gray",
        path.display()
    );
    img.into_luma8()
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}
