//! `TrainingImages::load` with arbitrary bytes as the mask (`masks/a.png`) of a valid 16×16
//! image, and as an image of its own (`images/a.png`, no masks): images or an error naming the
//! file, never a panic; what loads gives a training example. PNG chunk CRCs are recomputed
//! first, so that mutations reach the decoder instead of stopping at the CRC check: a crash
//! input to keep is the fixed-up file (`fmn_fuzz::scratch()`'s `masks/a.png`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A valid 16×16 RGB PNG.
fn valid_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let img =
            image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
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

/// CRC-32 (PNG's, ISO 3309) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` with the CRC of every whole PNG chunk after the signature recomputed.
fn fix_png_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if !out.starts_with(b"\x89PNG\r\n\x1a\n") {
        return out;
    }
    let mut at = 8;
    while at + 12 <= out.len() {
        let len = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= out.len()) else {
            break;
        };
        let crc = crc32(&out[at + 4..end]);
        out[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let data = &fix_png_crcs(data)[..];
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
