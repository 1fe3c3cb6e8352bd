//! Models fed images through ONNX Runtime, on the tiny fixtures of tests/fixtures/gen/: the
//! input checked against the spec, dynamic and fixed batch axes, outputs per image equal to
//! one raw run on the prepared input. Needs `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)`.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_onnx::{prepare_batch, ImageModel, InputSpec, OnnxError, Runtime};
use image::RgbImage;
use std::path::{Path, PathBuf};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
}

fn runtime() -> Runtime {
    Runtime::load(None)
        .expect("ONNX Runtime (export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh))")
}

fn images(n: usize, size: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|i| {
            RgbImage::from_fn(size + i as u32, size, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 13) as u8, (i * 40) as u8])
            })
        })
        .collect()
}

fn open(model: &str, spec: InputSpec, input: Option<&str>) -> Result<ImageModel, OnnxError> {
    let m = runtime().open(&fixture(model), 0)?;
    ImageModel::new(m, spec, input, None)
}

#[test]
fn a_dynamic_batch_runs_as_asked_and_matches_one_raw_run() {
    let spec = InputSpec {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        ..InputSpec::new([8, 8])
    };
    let model = open("onnx-classifier/classifier.onnx", spec.clone(), None).unwrap();
    assert_eq!(model.fixed_batch(), None);
    assert_eq!(model.max_batch(), usize::MAX);
    assert_eq!(
        (model.input().name.as_str(), model.output().name.as_str()),
        ("x", "logits")
    );
    let imgs = images(5, 11);
    let out = model.run(&imgs, 2).unwrap();
    assert_eq!(out.shape, Some(vec![5]));
    assert_eq!(out.rows.len(), 5);
    assert_eq!(out.geometry.len(), 5);
    assert_eq!((out.geometry[4].width, out.geometry[4].height), (15, 11));
    let (data, _) = prepare_batch(&imgs, &spec);
    let raw = runtime()
        .run_raw(
            &fixture("onnx-classifier/classifier.onnx"),
            "x",
            &[5, 3, 8, 8],
            data,
            "logits",
        )
        .unwrap();
    assert_eq!(out.rows.concat(), raw);
    let none: Vec<RgbImage> = Vec::new();
    assert!(model.run(&none, 2).unwrap().shape.is_none());
}

#[test]
fn a_fixed_batch_is_padded() {
    let model = open(
        "onnx-detector/detector-batch3.onnx",
        InputSpec::new([16, 16]),
        None,
    )
    .unwrap();
    assert_eq!(model.fixed_batch(), Some(3));
    let imgs = images(4, 16);
    let refs: Vec<&RgbImage> = imgs.iter().collect();
    let out = model.run(&refs, 100).unwrap();
    assert_eq!(out.shape, Some(vec![7, 16]));
    assert_eq!(out.rows.len(), 4);
    let alone = model.run(&refs[3..], 100).unwrap();
    assert_eq!(alone.rows[0], out.rows[3]);
}

#[test]
fn inputs_that_do_not_fit_are_named() {
    let err = |r: Result<ImageModel, OnnxError>| match r {
        Ok(_) => panic!("should not fit"),
        Err(e) => e.to_string(),
    };
    let e = err(open(
        "onnx-classifier/classifier.onnx",
        InputSpec::new([16, 8]),
        None,
    ));
    for want in [
        "classifier.onnx",
        "[-1, 3, 8, 8]",
        "[N, 3, 8, 16]",
        "input.size is [width, height]",
    ] {
        assert!(e.contains(want), "`{want}` not in {e}");
    }
    let e = err(open(
        "onnx-classifier/classifier.onnx",
        InputSpec::new([8, 8]),
        Some("image"),
    ));
    assert!(
        e.contains("input \"image\" is not in the model") && e.contains("x f32"),
        "{e}"
    );
    let e = match runtime().open(&fixture("onnx-classifier/nope.onnx"), 0) {
        Ok(_) => panic!("no such model"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("nope.onnx") && e.contains("does not exist"),
        "{e}"
    );
}
