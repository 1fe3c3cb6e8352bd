//! The toy segmenter's training and ONNX export: the writer checked against candle on the
//! shipped weights (through ONNX Runtime), the convolution against candle's, and training
//! determinism.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use fmn_toy::onnx::ModelProto;
use fmn_toy::segmenter::{self as toy, ToyNet, Widths};
use fmn_toy_world::render_folder::Sample;
use prost::Message;

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

    let probs = run_onnx(&path, toy::INPUT, &[16, 3, 64, 64], x, toy::OUTPUT);
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
    use fmn_toy::onnx::ConvSpec;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 10), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu).unwrap();
    for (stride, padding, dilation) in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1), (2, 0, 1)] {
        let spec = ConvSpec {
            stride,
            padding,
            dilation,
        };
        let ours = toy::conv2d(&x, &w, spec).unwrap();
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
