//! `TrainingImages::load` with arbitrary bytes as the mask (`masks/a.png`) of a valid 16×16
//! image, and as an image of its own (`images/a.png`, no masks): images or an error naming the
//! file, never a panic; what loads gives a training example.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A valid 16×16 RGB PNG.
fn valid_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("png");
        out.into_inner()
    })
}

fn check(images: &std::path::Path, masks: Option<&std::path::Path>, fuzzed: &std::path::Path) {
    use fmn_sd::train::images::TrainingImages;
    match TrainingImages::load(images, masks) {
        Ok(set) => {
            let item = &set.items[0];
            // Examples of small images only: a large one takes long to resize, not a finding.
            if item.image.width() * item.image.height() <= 1 << 16 {
                set.example(0, 16, None, &candle_core::Device::Cpu)
                    .expect("a loaded image gives an example");
            }
        }
        Err(e) => fmn_fuzz::names_file(&e.to_string(), fuzzed),
    }
}

fuzz_target!(|data: &[u8]| {
    // The fuzzed bytes as the mask of a valid image.
    let images = fmn_fuzz::fresh_dir("valid-images");
    std::fs::write(images.join("a.png"), valid_png()).expect("image");
    let masks = fmn_fuzz::fresh_dir("masks");
    let mask = masks.join("a.png");
    std::fs::write(&mask, data).expect("mask");
    check(&images, Some(&masks), &mask);
    // The fuzzed bytes as an image.
    let images = fmn_fuzz::fresh_dir("fuzzed-images");
    let image = images.join("a.png");
    std::fs::write(&image, data).expect("image");
    check(&images, None, &image);
});
