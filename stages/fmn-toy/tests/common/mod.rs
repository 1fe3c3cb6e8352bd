//! Shared test helpers: the toy-holdout fixtures and running an ONNX model.
#![allow(dead_code)]
use fmn_toy_world::render_folder::{load_render_folder, Sample};
use std::path::{Path, PathBuf};

/// The held-out renders of `tests/fixtures/toy-holdout/{which}` (the workspace's).
pub fn fixtures(which: &str) -> Vec<Sample> {
    let dir = fmn_testkit::fixtures().join("toy-holdout").join(which);
    load_render_folder(&dir).unwrap()
}

/// The shipped toy segmenter.
pub fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/toy-segmenter/model.onnx")
}

/// Runs the ONNX model `model` through ONNX Runtime (the library in ORT_DYLIB_PATH) on one
/// f32 input and returns one f32 output. The one place these tests use a runtime.
pub fn run_onnx(
    model: &Path,
    input: &str,
    shape: &[usize],
    data: Vec<f32>,
    output: &str,
) -> Vec<f32> {
    let lib = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "ORT_DYLIB_PATH is not set: this test runs the model through ONNX Runtime. \
             Run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)` first."
        ),
    };
    let rt = fmn_segment::Runtime::load(Some(&lib)).expect("ONNX Runtime loads");
    rt.run_raw(model, input, shape, data, output).unwrap()
}
