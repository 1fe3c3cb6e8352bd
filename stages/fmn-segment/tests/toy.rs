//! The shipped toy segmenter: its IoU on held-out renders measured through ONNX Runtime, the
//! ONNX writer checked against candle on the same weights, and training determinism.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use fmn_segment::onnx::ModelProto;
use fmn_segment::toy::{self, Sample, ToyNet, Widths};
use fmn_segment::{Preset, Runtime};
use prost::Message;
use std::path::PathBuf;

fn fixtures(which: &str) -> Vec<Sample> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/toy-holdout")
        .join(which);
    toy::load_render_folder(&dir).unwrap()
}

fn model_path() -> PathBuf {
    toy_preset()
        .parent()
        .unwrap()
        .join("../../data/toy-segmenter/model.onnx")
}

#[test]
fn iou_on_held_out_renders_is_at_least_0_9() {
    let rt = Runtime::load(Some(&ort_lib())).expect("ONNX Runtime loads");
    let preset = Preset::load(&toy_preset()).unwrap();
    let mut seg = rt.open(&preset, None, 0).expect("toy model opens");
    let clean = fmn_segment::cli::evaluate(&mut seg, &fixtures("clean")).unwrap();
    eprintln!("clean: {clean:?}");
    assert_eq!(clean.images, 200);
    assert!(clean.mean_iou >= 0.9, "clean renders: {clean:?}");
    let degraded = fmn_segment::cli::evaluate(&mut seg, &fixtures("degraded")).unwrap();
    eprintln!("degraded: {degraded:?}");
    assert!(degraded.mean_iou >= 0.9, "degraded renders: {degraded:?}");
}

#[test]
fn iou_on_fresh_fmn_toy_renders() {
    // Seeds nobody trained on, rendered now by fmn-toy.
    let rt = Runtime::load(Some(&ort_lib())).expect("ONNX Runtime loads");
    let preset = Preset::load(&toy_preset()).unwrap();
    let mut seg = rt.open(&preset, None, 0).expect("toy model opens");
    let clean = fmn_segment::cli::evaluate(&mut seg, &toy::render_samples(20_250, 300)).unwrap();
    eprintln!("fresh clean: {clean:?}");
    assert!(clean.mean_iou >= 0.9, "{clean:?}");
    let degraded =
        fmn_segment::cli::evaluate(&mut seg, &toy::degraded_samples(20_251, 100)).unwrap();
    eprintln!("fresh degraded: {degraded:?}");
    assert!(degraded.mean_iou >= 0.9, "{degraded:?}");
}

#[test]
fn fixtures_are_fmn_toy_renders() {
    let clean = fixtures("clean");
    for (f, r) in clean.iter().zip(toy::render_samples(202, 20)) {
        assert_eq!(f.image, r.image);
        assert_eq!(f.mask, r.mask);
    }
    let degraded = fixtures("degraded");
    for (f, r) in degraded.iter().zip(toy::degraded_samples(303, 5)) {
        assert_eq!(f.mask, r.mask);
        assert_eq!(f.image, r.image);
    }
}

#[test]
fn onnx_export_matches_candle() {
    let path = model_path();
    let model = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let net = ToyNet::from_onnx(&model, Widths::default()).unwrap();
    let samples: Vec<Sample> = fixtures("degraded").into_iter().take(16).collect();
    let x: Vec<f32> = samples
        .iter()
        .flat_map(|s| toy::normalise(&s.image))
        .collect();
    let xt = candle_core::Tensor::from_vec(x.clone(), (16, 3, 64, 64), &candle_core::Device::Cpu)
        .unwrap();
    let logits: Vec<f32> = net
        .forward(&xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    let rt = Runtime::load(Some(&ort_lib())).unwrap();
    let probs = rt
        .run_raw(&path, toy::INPUT, &[16, 3, 64, 64], x, toy::OUTPUT)
        .unwrap();
    assert_eq!(probs.len(), logits.len());
    let worst = logits
        .iter()
        .zip(&probs)
        .map(|(l, p)| (1.0 / (1.0 + (-l).exp()) - p).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "ONNX Runtime and candle differ by {worst}");

    // Re-exporting the read-back network gives the same graph.
    let again = net.to_onnx(&model.doc_string, &[]).unwrap();
    assert_eq!(again.graph, model.graph);
}

#[test]
fn candle_convolution_equals_candle_conv2d() {
    use candle_core::{Device, Tensor};
    use fmn_segment::onnx::ConvSpec;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 10), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu).unwrap();
    for (stride, padding, dilation) in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1), (2, 0, 1)] {
        let spec = ConvSpec {
            stride,
            padding,
            dilation,
        };
        let ours = toy::conv2d(&x, &w, 3, spec).unwrap();
        let theirs = x
            .conv2d(&w, padding as usize, stride as usize, dilation as usize, 1)
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{spec:?}");
        let diff: f32 = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "{spec:?}: {diff}");
    }
}

#[test]
fn training_is_deterministic_and_learns() {
    let samples = fixtures("clean");
    let cfg = toy::TrainConfig {
        steps: 4,
        batch: 4,
        ..Default::default()
    };
    let a = toy::train(&samples, &cfg, |_, _| {}).unwrap();
    let b = toy::train(&samples, &cfg, |_, _| {}).unwrap();
    assert_eq!(
        a.to_onnx("", &[]).unwrap(),
        b.to_onnx("", &[]).unwrap(),
        "same seed, same weights"
    );
    assert!(a.parameter_count() > 10_000 && a.parameter_count() < 100_000);
}
