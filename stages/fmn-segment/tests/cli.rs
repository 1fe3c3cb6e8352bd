//! The `fmn-segment` binary on temporary folders: the normal run and every bad input the issue
//! lists.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use std::fs;
use std::path::Path;

fn toy_folder(dir: &std::path::Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    let colours = [[210, 40, 40], [40, 160, 60], [40, 70, 210], [230, 200, 40]];
    for i in 0..n {
        let (img, _) = disc(
            64,
            20.0 + 3.0 * i as f32,
            30.0,
            10.0 + i as f32,
            colours[i % 4],
        );
        img.save(dir.join(format!("{i:05}.png"))).unwrap();
    }
}

#[test]
fn segments_a_folder_with_masks_overlays_and_manifest() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks, over) = (
        t.path().join("imgs"),
        t.path().join("masks"),
        t.path().join("over"),
    );
    toy_folder(&imgs, 5);
    fs::write(imgs.join("00000.txt"), "a caption").unwrap();
    fs::create_dir(imgs.join("masks")).unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
        "--overlay",
        s(&over),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("--json prints the manifest");
    assert_eq!(json["count"], 5);
    assert_eq!(json["failed"], 0);
    assert_eq!(json["skipped"], 1);
    let m = manifest(&masks);
    assert_eq!(m, json);
    for i in 0..5 {
        let name = format!("{i:05}.png");
        let mask = read_gray(&masks.join(&name));
        assert_eq!(mask.dimensions(), (64, 64));
        let entry = &m["masks"][i];
        assert_eq!(entry["image"], name.as_str());
        assert_eq!(entry["mask"], name.as_str());
        let cov = entry["coverage"].as_f64().unwrap();
        assert!(cov > 0.05 && cov < 0.6, "coverage {cov}");
        let overlay = image::open(over.join(&name)).unwrap();
        assert_eq!(overlay.color(), image::ColorType::Rgb8);
    }
    // Nothing but masks and the manifest in the masks folder; no staging leftovers.
    let names: Vec<String> = fs::read_dir(&masks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

#[test]
fn unreadable_image_is_named_counted_and_the_rest_written() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks) = (t.path().join("imgs"), t.path().join("masks"));
    toy_folder(&imgs, 3);
    fs::write(imgs.join("00001b.png"), b"this is not a png").unwrap();
    fs::write(
        imgs.join("zz-truncated.png"),
        &fs::read(imgs.join("00000.png")).unwrap()[..60],
    )
    .unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("00001b.png") && err.contains("zz-truncated.png"),
        "{err}"
    );
    assert!(err.contains("2 images failed"), "{err}");
    let m = manifest(&masks);
    assert_eq!(m["count"], 3);
    assert_eq!(m["failed"], 2);
    for i in 0..3 {
        assert!(masks.join(format!("{i:05}.png")).is_file());
    }
}

#[test]
fn earlier_masks_survive_a_later_run_that_fails() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks) = (t.path().join("imgs"), t.path().join("masks"));
    toy_folder(&imgs, 2);
    assert!(run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
        "-q"
    ])
    .status
    .success());
    let before = fs::read(masks.join("00000.png")).unwrap();
    let other = t.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("bad.png"), b"nope").unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&other),
        "--out",
        s(&masks),
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(masks.join("00000.png")).unwrap(), before);
}

#[test]
fn empty_folder_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let imgs = t.path().join("imgs");
    fs::create_dir(&imgs).unwrap();
    fs::write(imgs.join("notes.txt"), "x").unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&t.path().join("m")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no images in") && err.contains("1 other files"),
        "{err}"
    );
    assert!(!t.path().join("m").exists());
}

#[test]
fn missing_images_folder_or_a_file_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&t.path().join("nope")),
        "--out",
        s(&t.path().join("m")),
    ]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let f = t.path().join("f.png");
    disc(8, 4.0, 4.0, 2.0, [0, 0, 0]).0.save(&f).unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&f),
        "--out",
        s(&t.path().join("m")),
    ]);
    assert!(stderr(&out).contains("is not a folder"), "{}", stderr(&out));
}

#[test]
fn output_folder_equal_to_input_folder_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let imgs = t.path().join("imgs");
    toy_folder(&imgs, 1);
    let same = format!("{}/../imgs/.", s(&imgs));
    for out_dir in [s(&imgs), same.as_str()] {
        let out = run(&["--segmenter", "toy", "--images", s(&imgs), "--out", out_dir]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("is the images folder"),
            "{}",
            stderr(&out)
        );
    }
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&t.path().join("m")),
        "--overlay",
        s(&imgs),
    ]);
    assert!(stderr(&out).contains("overlay folder"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&imgs).unwrap().count(), 1);
}

#[test]
fn two_images_with_one_mask_name_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let imgs = t.path().join("imgs");
    toy_folder(&imgs, 1);
    let img = image::open(imgs.join("00000.png")).unwrap().into_rgb8();
    img.save(imgs.join("00000.jpg")).unwrap();
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&t.path().join("m")),
    ]);
    assert!(
        stderr(&out).contains("would both write mask 00000.png"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn odd_images_are_handled() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks) = (t.path().join("imgs"), t.path().join("masks"));
    fs::create_dir(&imgs).unwrap();
    let (rgb, _) = disc(64, 32.0, 32.0, 14.0, [40, 70, 210]);
    // 1×1, grayscale, gray+alpha, RGBA (transparent corner), 16-bit RGB and RGBA, JPEG, wide.
    image::RgbImage::from_pixel(1, 1, Rgb([200, 30, 30]))
        .save(imgs.join("a-1x1.png"))
        .unwrap();
    DynamicImage::ImageRgb8(rgb.clone())
        .into_luma8()
        .save(imgs.join("b-gray.png"))
        .unwrap();
    DynamicImage::ImageRgb8(rgb.clone())
        .into_luma_alpha8()
        .save(imgs.join("c-gray-alpha.png"))
        .unwrap();
    let mut rgba = DynamicImage::ImageRgb8(rgb.clone()).into_rgba8();
    rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
    rgba.save(imgs.join("d-rgba.png")).unwrap();
    DynamicImage::ImageRgb8(rgb.clone())
        .into_rgb16()
        .save(imgs.join("e-16bit.png"))
        .unwrap();
    DynamicImage::ImageRgb8(rgb.clone())
        .into_rgba16()
        .save(imgs.join("f-16bit-rgba.png"))
        .unwrap();
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_pixel(5, 3, Luma([40000]))
        .save(imgs.join("g-gray16.png"))
        .unwrap();
    rgb.save(imgs.join("h.JPG")).unwrap();
    image::imageops::resize(&rgb, 300, 20, image::imageops::FilterType::Nearest)
        .save(imgs.join("i-wide.png"))
        .unwrap();
    let _ = LumaA([0u8, 0]);
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = manifest(&masks);
    assert_eq!(m["count"], 9, "{m}");
    for (name, w, h) in [
        ("a-1x1.png", 1, 1),
        ("b-gray.png", 64, 64),
        ("e-16bit.png", 64, 64),
        ("g-gray16.png", 5, 3),
        ("h.png", 64, 64),
        ("i-wide.png", 300, 20),
    ] {
        assert_eq!(read_gray(&masks.join(name)).dimensions(), (w, h), "{name}");
    }
    // The disc is found whatever the pixel format.
    for name in [
        "b-gray.png",
        "c-gray-alpha.png",
        "d-rgba.png",
        "e-16bit.png",
        "f-16bit-rgba.png",
        "h.png",
    ] {
        let mask = read_gray(&masks.join(name));
        assert_eq!(mask.get_pixel(32, 32)[0], 255, "{name}: centre");
        assert_eq!(mask.get_pixel(2, 2)[0], 0, "{name}: corner");
    }
}

#[test]
fn a_10000_pixel_square_image() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks) = (t.path().join("imgs"), t.path().join("masks"));
    fs::create_dir(&imgs).unwrap();
    let n = 10_000;
    let mut img = image::RgbImage::from_pixel(n, n, Rgb([236, 232, 224]));
    for y in 3000..7000 {
        for x in 3000..7000 {
            img.put_pixel(x, y, Rgb([210, 40, 40]));
        }
    }
    img.save(imgs.join("big.png")).unwrap();
    drop(img);
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mask = read_gray(&masks.join("big.png"));
    assert_eq!(mask.dimensions(), (n, n));
    assert_eq!(mask.get_pixel(5000, 5000)[0], 255);
    assert_eq!(mask.get_pixel(100, 100)[0], 0);
    let cov = manifest(&masks)["masks"][0]["coverage"].as_f64().unwrap();
    assert!((cov - 0.16).abs() < 0.02, "coverage {cov}");
}

#[test]
fn runtime_missing_or_wrong_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let imgs = t.path().join("imgs");
    toy_folder(&imgs, 1);
    let m = t.path().join("m");
    let args = ["--segmenter", "toy", "--images", s(&imgs), "--out", s(&m)];
    let out = run_with_ort(&args, None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ORT_DYLIB_PATH is not set") && err.contains("install-onnxruntime.sh"),
        "{err}"
    );

    let out = run_with_ort(&args, Some("/nonexistent/libonnxruntime.so.1.31.1"));
    assert!(
        stderr(&out).contains("does not exist") && stderr(&out).contains("install-onnxruntime.sh"),
        "{}",
        stderr(&out)
    );

    let fake = t.path().join("libonnxruntime.so");
    fs::write(&fake, "not a library").unwrap();
    let out = run_with_ort(&args, Some(s(&fake)));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot load ONNX Runtime"),
        "{}",
        stderr(&out)
    );

    // A real shared library that is not ONNX Runtime (the test binary's own libc's neighbour).
    if let Some(other) = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).is_file())
    {
        let out = run_with_ort(&args, Some(other));
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("OrtGetApiBase"), "{}", stderr(&out));
    }

    // --ort-lib wins over the environment.
    let out = run_with_ort(
        &[&args[..], &["--ort-lib", s(&ort_lib())]].concat(),
        Some(s(&fake)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!m.join("manifest.json").exists() || m.join("00000.png").is_file());
}

#[test]
fn usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let imgs = t.path().join("imgs");
    toy_folder(&imgs, 1);
    let m = t.path().join("m");
    let out = run(&[
        "--segmenter",
        "nosuchpreset",
        "--images",
        s(&imgs),
        "--out",
        s(&m),
    ]);
    let err = stderr(&out);
    assert!(
        err.contains("no preset named \"nosuchpreset\"") && err.contains("toy"),
        "{err}"
    );
    let out = run(&[
        "--segmenter",
        "model.onnx",
        "--images",
        s(&imgs),
        "--out",
        s(&m),
    ]);
    assert!(stderr(&out).contains("--preset"), "{}", stderr(&out));
    let out = run(&[
        "--segmenter",
        "toy",
        "--preset",
        "toy",
        "--images",
        s(&imgs),
        "--out",
        s(&m),
    ]);
    assert!(
        stderr(&out).contains("goes with an ONNX --segmenter"),
        "{}",
        stderr(&out)
    );
    // No --segmenter (it may also come from --config): a plain error naming it.
    let out = run(&["--images", s(&imgs), "--out", s(&m)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--segmenter"), "{}", stderr(&out));
    let out = run(&["--segmenter", "u2net", "--images", s(&imgs), "--out", s(&m)]);
    assert!(
        stderr(&out).contains("weights are not shipped"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn inspect_lists_inputs_and_outputs() {
    let model = toy_preset()
        .parent()
        .unwrap()
        .join("../../data/toy-segmenter/model.onnx");
    let out = run(&["inspect", s(&model)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("input image f32 [-1, 3, 64, 64]"), "{text}");
    assert!(text.contains("output mask f32 [-1, 1, 64, 64]"), "{text}");
}

#[test]
fn a_config_file_supplies_options_and_flags_override_it() {
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks, over) = (
        t.path().join("imgs"),
        t.path().join("masks"),
        t.path().join("over"),
    );
    toy_folder(&imgs, 2);
    let cfg = t.path().join("segment.yaml");
    fs::write(
        &cfg,
        format!(
            "segmenter: toy\nbatch_size: 1\noverlay: {}\n",
            over.display()
        ),
    )
    .unwrap();
    let out = run(&[
        "--config",
        s(&cfg),
        "--images",
        s(&imgs),
        "--out",
        s(&masks),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(manifest(&masks)["count"], 2);
    assert!(
        over.join("00000.png").is_file(),
        "the config's overlay folder is used"
    );

    let masks2 = t.path().join("masks2");
    let out = run(&[
        "--config",
        s(&cfg),
        "--segmenter",
        "no-such-preset",
        "--images",
        s(&imgs),
        "--out",
        s(&masks2),
    ]);
    assert!(
        !out.status.success(),
        "the --segmenter flag wins over the file"
    );
    assert!(stderr(&out).contains("no-such-preset"), "{}", stderr(&out));

    fs::write(&cfg, "modle: toy\n").unwrap();
    let out = run(&[
        "--config",
        s(&cfg),
        "--images",
        s(&imgs),
        "--out",
        s(&masks2),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("modle") && stderr(&out).contains("segment.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn follows_the_cli_convention() {
    // --help shows the shared Output group and the ONNX Runtime option.
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for want in [
        "Output:",
        "--json",
        "--quiet",
        "--verbose",
        "--segmenter",
        "--ort-lib",
    ] {
        assert!(help.contains(want), "--help lacks {want}:\n{help}");
    }
    assert!(!help.contains("--model"), "{help}");

    // -q: nothing at all on success.
    let t = tempfile::tempdir().unwrap();
    let (imgs, masks) = (t.path().join("imgs"), t.path().join("masks"));
    toy_folder(&imgs, 2);
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "-o",
        s(&masks),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((stdout(&out), stderr(&out)), (String::new(), String::new()));
    assert!(masks.join("00001.png").is_file());
    // Without -q, one summary line on stderr; --json alone prints only the manifest.
    let out = run(&["--segmenter", "toy", "--images", s(&imgs), "-o", s(&masks)]);
    assert!(stderr(&out).contains("2 masks in"), "{}", stderr(&out));
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "-o",
        s(&masks),
        "--json",
    ]);
    assert_eq!(stderr(&out), "");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["count"], 2);

    // One corrupt image: exit 1, named, the other masks written (also with -q).
    fs::write(imgs.join("00000-corrupt.png"), b"not a png").unwrap();
    let masks2 = t.path().join("masks2");
    let out = run(&[
        "--segmenter",
        "toy",
        "--images",
        s(&imgs),
        "-o",
        s(&masks2),
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("00000-corrupt.png"),
        "{}",
        stderr(&out)
    );
    assert!(masks2.join("00000.png").is_file() && masks2.join("00001.png").is_file());
    assert_eq!(manifest(&masks2)["failed"], 1);

    // Usage errors exit 2; the old --model flag is one.
    for args in [
        &["--no-such-flag"][..],
        &["--model", "toy", "--images", s(&imgs), "-o", s(&masks)][..],
        &["--batch-size", "many", "--images", s(&imgs)][..],
        &[s(&imgs), "-o", s(&masks)][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }

    // eval --min-iou above what the model reaches: exit 1, named.
    let renders =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/toy-holdout/clean");
    let out = run(&["eval", "--images", s(&renders), "--min-iou", "1.01", "-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("below --min-iou"), "{}", stderr(&out));
    let out = run(&["eval", "--images", s(&renders), "--min-iou", "0.5", "-q"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((stdout(&out), stderr(&out)), (String::new(), String::new()));
}
