//! The shipped toy segmenter: its IoU on held-out renders measured through ONNX Runtime (its
//! training and ONNX export are tested in fmn-toy's `tests/segmenter.rs`).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use fmn_segment::{Preset, Runtime};
use fmn_toy_world::render_folder::{self as toy, Sample};

fn fixtures(which: &str) -> Vec<Sample> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/toy-holdout")
        .join(which);
    toy::load_render_folder(&dir).unwrap()
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
