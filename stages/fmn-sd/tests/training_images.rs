//! Training-image folders: what is read, how examples are cut, and which inputs are refused.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::probes::resize_mask;
use fmn_sd::train::images::TrainingImages;
use image::{GrayImage, Luma, Rgb, RgbImage};

fn write_set(dir: &std::path::Path, masks: Option<&std::path::Path>) {
    for i in 0..3u8 {
        let img = RgbImage::from_fn(32, 24, |x, y| Rgb([i * 50, x as u8 * 8, y as u8 * 10]));
        img.save(dir.join(format!("im{i}.png"))).unwrap();
        if let Some(m) = masks {
            GrayImage::from_fn(32, 24, |x, _| Luma([if x < 16 { 255 } else { 0 }]))
                .save(m.join(format!("im{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
}

#[test]
fn centre_crop_is_scaled_to_minus_one_one_and_masks_follow() {
    let dir = tempfile::tempdir().unwrap();
    let masks = tempfile::tempdir().unwrap();
    write_set(dir.path(), Some(masks.path()));
    let set = TrainingImages::load(dir.path(), Some(masks.path())).unwrap();
    assert_eq!(set.len(), 3);
    assert!(set.has_masks());
    let ex = set.example(1, 24, None, &Device::Cpu).unwrap();
    assert_eq!(ex.pixels.dims(), &[1, 3, 24, 24]);
    // The centred 24x24 square starts at x = 4; red is 50 everywhere: 50/255*2-1.
    let red: Vec<f32> = ex
        .pixels
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(red.iter().all(|v| (v - (50.0 / 127.5 - 1.0)).abs() < 1e-6));
    let green00: f32 = ex
        .pixels
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((green00 - (32.0 / 127.5 - 1.0)).abs() < 1e-6, "{green00}");
    // Mask: columns x < 16 of the image, i.e. the first 12 of the crop.
    let mask = ex.mask.unwrap();
    let mean: f32 = mask.mean_all().unwrap().to_scalar().unwrap();
    assert!((mean - 0.5).abs() < 1e-6, "{mean}");
    let mut rng = NoiseRng::new(3);
    let aug = set.example(0, 16, Some(&mut rng), &Device::Cpu).unwrap();
    assert_eq!(aug.pixels.dims(), &[1, 3, 16, 16]);
}

#[test]
fn mask_resize_averages_blocks() {
    let m = Tensor::from_vec(
        vec![
            1f32, 0., 1., 1., 0., 0., 1., 0., 0., 0., 0., 0., 1., 1., 1., 1.,
        ],
        (1, 1, 4, 4),
        &Device::Cpu,
    )
    .unwrap();
    let r: Vec<f32> = resize_mask(&m, 2, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(r, vec![0.25, 0.75, 0.5, 0.5]);
}

#[test]
fn bad_folders_are_refused_with_the_file_named() {
    let empty = tempfile::tempdir().unwrap();
    let err = TrainingImages::load(empty.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no images"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), None);
    let masks = tempfile::tempdir().unwrap();
    let err = TrainingImages::load(dir.path(), Some(masks.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("im0.png") && err.contains("missing"), "{err}");

    GrayImage::new(8, 8)
        .save(masks.path().join("im0.png"))
        .unwrap();
    let err = TrainingImages::load(dir.path(), Some(masks.path()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("8x8") && err.contains("32x24"), "{err}");

    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    let err = TrainingImages::load(dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.png"), "{err}");

    let tiny = tempfile::tempdir().unwrap();
    RgbImage::new(8, 40)
        .save(tiny.path().join("t.png"))
        .unwrap();
    let err = TrainingImages::load(tiny.path(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too small"), "{err}");
}
