//! The preset machinery (channel order, normalisation, resize modes, output kinds,
//! post-processing, name and rank checks) on small ONNX models written by our own writer and
//! run through ONNX Runtime.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use fmn_toy::onnx::Dim;
use image::{Rgb, RgbImage};
use std::fs;
use std::path::Path;

/// Half red, half blue: red on the left 8 columns of 16.
fn red_blue(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn one_image(dir: &Path, img: &RgbImage) -> std::path::PathBuf {
    let imgs = dir.join("imgs");
    fs::create_dir_all(&imgs).unwrap();
    img.save(imgs.join("img.png")).unwrap();
    imgs
}

fn segment(model: &Path, preset: &Path, imgs: &Path, masks: &Path) -> std::process::Output {
    run(&[
        "--segmenter",
        s(model),
        "--preset",
        s(preset),
        "--images",
        s(imgs),
        "--out",
        s(masks),
        "-q",
    ])
}

#[test]
fn channel_order_and_mean_std_reach_the_model() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("first-channel.onnx");
    // y = first input channel.
    conv1x1_model(&model, 16, Dim::from("N"), &[1.0, 0.0, 0.0], &[0.0], false);
    let imgs = one_image(t.path(), &red_blue(16, 16));
    let out_spec = "  name: y\n  kind: probability";
    for (order, left, right) in [("rgb", 255, 0), ("bgr", 0, 255)] {
        let p = preset(
            t.path(),
            order,
            &model,
            &format!("  name: x\n  size: [16, 16]\n  channels: {order}"),
            out_spec,
            "  threshold: 0.5",
        );
        let masks = t.path().join(format!("m-{order}"));
        let out = segment(&model, &p, &imgs, &masks);
        assert!(out.status.success(), "{}", stderr(&out));
        let m = read_gray(&masks.join("img.png"));
        assert_eq!(
            (m.get_pixel(2, 5)[0], m.get_pixel(13, 5)[0]),
            (left, right),
            "{order}"
        );
    }
    // mean 1, std 1: the red channel becomes 0 and 1-1=0, blue -1: nothing passes 0.5.
    let p = preset(
        t.path(),
        "meanstd",
        &model,
        "  name: x\n  size: [16, 16]\n  mean: [1, 1, 1]",
        out_spec,
        "  threshold: 0.5",
    );
    let masks = t.path().join("m-meanstd");
    assert!(segment(&model, &p, &imgs, &masks).status.success());
    assert!(read_gray(&masks.join("img.png"))
        .pixels()
        .all(|p| p[0] == 0));
    // std 0.25: red → 4, passes; soft output clamps to 1 → 255 without a threshold.
    let p = preset(
        t.path(),
        "soft",
        &model,
        "  name: x\n  size: [16, 16]\n  std: [0.25, 1, 1]",
        out_spec,
        "  threshold: null",
    );
    let masks = t.path().join("m-soft");
    assert!(segment(&model, &p, &imgs, &masks).status.success());
    assert_eq!(read_gray(&masks.join("img.png")).get_pixel(0, 0)[0], 255);
}

#[test]
fn logits_choose_classes() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("logits.onnx");
    // Three classes whose logits are the R, G, B values ×10.
    conv1x1_model(
        &model,
        16,
        Dim::from("N"),
        &[10., 0., 0., 0., 10., 0., 0., 0., 10.],
        &[0.0; 3],
        false,
    );
    let imgs = one_image(t.path(), &red_blue(16, 16));
    for (classes, left, right) in [
        ("[2]", 0, 255),
        ("[0]", 255, 0),
        ("[0, 2]", 255, 255),
        ("[1]", 0, 0),
    ] {
        let p = preset(
            t.path(),
            "logits",
            &model,
            "  name: x\n  size: [16, 16]",
            &format!("  name: y\n  kind: logits\n  classes: {classes}"),
            "  threshold: 0.5",
        );
        let masks = t.path().join(format!("m{}", classes.len()));
        let _ = fs::remove_dir_all(&masks);
        let out = segment(&model, &p, &imgs, &masks);
        assert!(out.status.success(), "{}", stderr(&out));
        let m = read_gray(&masks.join("img.png"));
        assert_eq!(
            (m.get_pixel(1, 1)[0], m.get_pixel(14, 1)[0]),
            (left, right),
            "classes {classes}"
        );
    }
    // A class the model does not have.
    let p = preset(
        t.path(),
        "logits5",
        &model,
        "  name: x\n  size: [16, 16]",
        "  name: y\n  kind: logits\n  classes: [5]",
        "  threshold: 0.5",
    );
    let out = segment(&model, &p, &imgs, &t.path().join("m5"));
    assert!(stderr(&out).contains("has 3 classes"), "{}", stderr(&out));
}

#[test]
fn crop_letterbox_and_stretch_map_back() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("ones.onnx");
    // Everywhere 1 except where the input is padding black: y = sigmoid(10·(R+G+B) − 5).
    conv1x1_model(&model, 16, Dim::from("N"), &[10., 10., 10.], &[-5.0], true);
    let white = RgbImage::from_pixel(64, 16, Rgb([255, 255, 255]));
    let imgs = one_image(t.path(), &white);
    let out_spec = "  name: y\n  kind: probability";
    for (mode, expect_cov) in [("stretch", 1.0), ("letterbox", 1.0), ("crop", 0.25)] {
        let p = preset(
            t.path(),
            mode,
            &model,
            &format!("  name: x\n  size: [16, 16]\n  resize: {mode}"),
            out_spec,
            "  threshold: 0.5",
        );
        let masks = t.path().join(format!("m-{mode}"));
        let out = segment(&model, &p, &imgs, &masks);
        assert!(out.status.success(), "{}", stderr(&out));
        let cov = manifest(&masks)["masks"][0]["coverage"].as_f64().unwrap();
        assert!((cov - expect_cov).abs() < 1e-9, "{mode}: coverage {cov}");
        let m = read_gray(&masks.join("img.png"));
        assert_eq!(m.dimensions(), (64, 16));
        if mode == "crop" {
            assert_eq!((m.get_pixel(10, 8)[0], m.get_pixel(32, 8)[0]), (0, 255));
        }
    }
}

#[test]
fn post_processing_from_the_preset() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("red.onnx");
    conv1x1_model(&model, 32, Dim::from("N"), &[1.0, 0.0, 0.0], &[0.0], false);
    // Two red squares: 12×12 and 4×4.
    let mut img = RgbImage::new(32, 32);
    for y in 2..14 {
        for x in 2..14 {
            img.put_pixel(x, y, Rgb([255, 0, 0]));
        }
    }
    for y in 24..28 {
        for x in 24..28 {
            img.put_pixel(x, y, Rgb([255, 0, 0]));
        }
    }
    let imgs = one_image(t.path(), &img);
    let input = "  name: x\n  size: [32, 32]";
    let out_spec = "  name: y\n  kind: probability";
    let count = |post: &str, name: &str| -> usize {
        let p = preset(t.path(), name, &model, input, out_spec, post);
        let masks = t.path().join(format!("m-{name}"));
        let out = segment(&model, &p, &imgs, &masks);
        assert!(out.status.success(), "{}", stderr(&out));
        read_gray(&masks.join("img.png"))
            .pixels()
            .filter(|p| p[0] >= 128)
            .count()
    };
    assert_eq!(count("  threshold: 0.5", "plain"), 144 + 16);
    assert_eq!(count("  keep_largest: true", "largest"), 144);
    assert_eq!(count("  dilate: 1", "dilate"), 14 * 14 + 6 * 6);
    assert_eq!(count("  erode: 1", "erode"), 10 * 10 + 2 * 2);
    assert_eq!(count("  erode: 2\n  dilate: 2", "open"), 144);
    let feathered = count("  feather: 2.0", "feather");
    assert!(feathered > 100 && feathered < 200, "{feathered}");
}

#[test]
fn fixed_batch_of_one_takes_many_images() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("b1.onnx");
    conv1x1_model(&model, 8, Dim::Fixed(1), &[1.0, 0.0, 0.0], &[0.0], false);
    let imgs = t.path().join("imgs");
    fs::create_dir(&imgs).unwrap();
    for i in 0..5u8 {
        RgbImage::from_pixel(8, 8, Rgb([if i % 2 == 0 { 255 } else { 0 }, 0, 0]))
            .save(imgs.join(format!("{i}.png")))
            .unwrap();
    }
    let p = preset(
        t.path(),
        "b1",
        &model,
        "  name: x\n  size: [8, 8]",
        "  name: y\n  kind: probability",
        "  threshold: 0.5",
    );
    let masks = t.path().join("m");
    let out = run(&[
        "--segmenter",
        s(&model),
        "--preset",
        s(&p),
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
        "--batch-size",
        "4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&masks);
    let covs: Vec<f64> = (0..5)
        .map(|i| m["masks"][i]["coverage"].as_f64().unwrap())
        .collect();
    assert_eq!(covs, vec![1.0, 0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn names_ranks_and_sizes_that_do_not_match_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("m.onnx");
    conv1x1_model(&model, 16, Dim::from("N"), &[1.0, 0.0, 0.0], &[0.0], false);
    let imgs = one_image(t.path(), &red_blue(16, 16));
    let check = |name: &str, input: &str, output: &str, want: &[&str]| {
        let p = preset(t.path(), name, &model, input, output, "  threshold: 0.5");
        let masks = t.path().join(format!("m-{name}"));
        let out = segment(&model, &p, &imgs, &masks);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = stderr(&out);
        for w in want {
            assert!(err.contains(w), "{name}: {err:?} lacks {w:?}");
        }
        assert!(!masks.join("img.png").exists());
    };
    check(
        "input-name",
        "  name: image\n  size: [16, 16]",
        "  name: y\n  kind: probability",
        &["input \"image\" is not in the model", "x f32"],
    );
    check(
        "output-name",
        "  name: x\n  size: [16, 16]",
        "  name: mask\n  kind: probability",
        &["output \"mask\" is not in the model"],
    );
    check(
        "size",
        "  name: x\n  size: [32, 32]",
        "  name: y\n  kind: probability",
        &["[N, 3, 32, 32]"],
    );
    // A three-channel output is not a probability map.
    let m3 = t.path().join("m3.onnx");
    conv1x1_model(&m3, 16, Dim::from("N"), &[1.0; 9], &[0.0; 3], false);
    let p = preset(
        t.path(),
        "chan",
        &m3,
        "  name: x\n  size: [16, 16]",
        "  name: y\n  kind: probability",
        "  threshold: 0.5",
    );
    let out = segment(&m3, &p, &imgs, &t.path().join("m-chan"));
    assert!(stderr(&out).contains("has 3 channels"), "{}", stderr(&out));
    // Rank 3 input.
    let r3 = t.path().join("r3.onnx");
    {
        use fmn_toy::onnx::{encode, GraphBuilder};
        let mut g = GraphBuilder::new("r3");
        let x = g.input("x", &[3.into(), 16.into(), 16.into()]);
        let y = g.sigmoid(&x);
        g.output(&y, &[3.into(), 16.into(), 16.into()]);
        fs::write(&r3, encode(&g.finish("", &[]))).unwrap();
    }
    let p = preset(
        t.path(),
        "rank",
        &r3,
        "  name: x\n  size: [16, 16]",
        "  kind: probability",
        "  threshold: 0.5",
    );
    let out = segment(&r3, &p, &imgs, &t.path().join("m-rank"));
    assert!(stderr(&out).contains("has rank 3"), "{}", stderr(&out));
    // Not an ONNX file at all.
    let junk = t.path().join("junk.onnx");
    fs::write(&junk, "not onnx").unwrap();
    let p = preset(
        t.path(),
        "junk",
        &junk,
        "  name: x\n  size: [16, 16]",
        "  kind: probability",
        "  threshold: 0.5",
    );
    let out = segment(&junk, &p, &imgs, &t.path().join("m-junk"));
    assert!(
        stderr(&out).contains("cannot load model"),
        "{}",
        stderr(&out)
    );
    // A preset with a misspelt key.
    let bad = t.path().join("bad.yaml");
    fs::write(
        &bad,
        "name: bad\ninput: {size: [16, 16], chanels: rgb}\noutput: {kind: probability}\n",
    )
    .unwrap();
    let out = segment(&model, &bad, &imgs, &t.path().join("m-bad"));
    assert!(stderr(&out).contains("chanels"), "{}", stderr(&out));
}
