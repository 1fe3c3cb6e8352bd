//! The `clip:` judge's preprocessing against transformers 4.57.6's `CLIPImageProcessor` with
//! the openai/clip-vit-large-patch14 settings, on the photos of tests/fixtures/photos/
//! (tests/fixtures/clip-preprocess-reference.safetensors, made by
//! tests/fixtures/gen/make_clip_preprocess_fixture.py with Pillow 13.0.0; spec:
//! tests/fixtures/gen/CLIP_PREPROCESS.md):
//!
//! - the images load as PIL's `convert("RGB")` loads them (gray replicated, alpha dropped);
//! - the resized + centre-cropped uint8 pixels equal the processor's on every photo, in both
//!   Pillow pass orders (≤ 12: horizontal first, the judge's default; ≥ 13);
//! - the rescale/normalise table and the float `pixel_values` equal the processor's, bit for
//!   bit (stored tensors for 4 photos, sha256 of the float32 bytes for all 11).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_eval::judge::{ClipJudge, Judge};
use image::RgbImage;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// openai/clip-vit-large-patch14's `preprocessor_config.json` (the Stable Diffusion safety
/// checker's feature extractor), in its legacy integer form.
const LARGE_PATCH14: &str = r#"{
  "crop_size": 224,
  "do_center_crop": true,
  "do_normalize": true,
  "do_resize": true,
  "feature_extractor_type": "CLIPFeatureExtractor",
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3,
  "size": 224
}"#;

/// The same settings as transformers 4.57.6's `save_pretrained` writes them.
const LARGE_PATCH14_DICTS: &str = r#"{
  "crop_size": {"height": 224, "width": 224},
  "do_center_crop": true,
  "do_convert_rgb": true,
  "do_normalize": true,
  "do_rescale": true,
  "do_resize": true,
  "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_processor_type": "CLIPImageProcessor",
  "image_std": [0.26862954, 0.26130258, 0.27577711],
  "resample": 3,
  "rescale_factor": 0.00392156862745098,
  "size": {"shortest_edge": 224}
}"#;

/// The safetensors file: header entries, metadata, data.
struct Reference {
    tensors: BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    photos: Vec<Value>,
}

impl Reference {
    fn load() -> Self {
        let bytes =
            std::fs::read(fixtures().join("clip-preprocess-reference.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut tensors = BTreeMap::new();
        let mut photos = vec![];
        for (name, v) in header {
            if name == "__metadata__" {
                photos = serde_json::from_str(v["photos"].as_str().unwrap()).unwrap();
                continue;
            }
            let off: Vec<usize> = v["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            tensors.insert(
                name,
                (
                    v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    data[off[0]..off[1]].to_vec(),
                ),
            );
        }
        assert_eq!(photos.len(), 11, "fixture photos");
        Self { tensors, photos }
    }

    fn u8(&self, name: &str) -> Option<&[u8]> {
        self.tensors.get(name).map(|(dtype, shape, b)| {
            assert_eq!(
                (dtype.as_str(), shape.as_slice()),
                ("U8", &[3, 224, 224][..])
            );
            b.as_slice()
        })
    }

    fn f32(&self, name: &str) -> Option<Vec<f32>> {
        self.tensors.get(name).map(|(dtype, _, b)| {
            assert_eq!(dtype, "F32");
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
}

/// An image's planes R, G, B (the fixture's uint8 layout).
fn chw(img: &RgbImage) -> Vec<u8> {
    (0..3)
        .flat_map(|c| img.pixels().map(move |p| p[c]))
        .collect()
}

fn load_photo(meta: &Value) -> RgbImage {
    // As fmn-eval reads sample images (eval.rs: image::open(..).to_rgb8()).
    image::open(fixtures().join(meta["file"].as_str().unwrap()))
        .unwrap()
        .to_rgb8()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A `preprocessor_config.json` holding `json` (and the folder to keep alive). The processor
/// type is reached through `ClipJudge::read_processor` (fmn_eval::judge does not name it).
fn config(json: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("preprocessor_config.json");
    std::fs::write(&f, json).unwrap();
    (dir, f)
}

#[test]
fn fixture_photos_load_as_pil_convert_rgb() {
    let r = Reference::load();
    for m in &r.photos {
        let path = fixtures().join(m["file"].as_str().unwrap());
        assert_eq!(
            sha256(&std::fs::read(&path).unwrap()),
            m["file_sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
        let raw = image::open(&path).unwrap();
        let rgb = raw.to_rgb8();
        let (w, h) = (m["width"].as_u64().unwrap(), m["height"].as_u64().unwrap());
        assert_eq!((u64::from(rgb.width()), u64::from(rgb.height())), (w, h));
        match m["pil_mode"].as_str().unwrap() {
            "RGB" => assert_eq!(raw.color(), image::ColorType::Rgb8),
            "L" => {
                // Gray replicated to R = G = B.
                let l = raw.as_luma8().unwrap();
                assert!(rgb.pixels().zip(l.pixels()).all(|(p, g)| p.0 == [g[0]; 3]));
            }
            "RGBA" => {
                // Alpha dropped, colours kept as stored (no compositing), like PIL's
                // convert("RGB"); the photo does have transparent pixels.
                let rgba = raw.as_rgba8().unwrap();
                assert!(rgba.pixels().any(|p| p[3] < 255));
                assert!(rgba.pixels().any(|p| p[3] == 0 && p.0[..3] != [255; 3]));
                assert!(rgb
                    .pixels()
                    .zip(rgba.pixels())
                    .all(|(p, q)| p.0[..] == q.0[..3]));
            }
            mode => panic!("{}: mode {mode} not covered", path.display()),
        }
    }
}

#[test]
fn lut_equals_transformers_rescale_and_normalise() {
    let r = Reference::load();
    let want = r.f32("lut").unwrap();
    for json in [LARGE_PATCH14, LARGE_PATCH14_DICTS] {
        let (_d, f) = config(json);
        let p = ClipJudge::read_processor(&f).unwrap();
        let lut = p.lut();
        let got: Vec<f32> = lut.iter().flatten().copied().collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "lut[{}][{}]: {g} vs {w}",
                i / 256,
                i % 256
            );
        }
    }
    let (_d, f) = config(LARGE_PATCH14);
    let (_e, g) = config(LARGE_PATCH14_DICTS);
    assert_eq!(
        ClipJudge::read_processor(&f).unwrap(),
        ClipJudge::read_processor(&g).unwrap()
    );
}

/// Resize + crop of every photo against the fixture's uint8 crops: `(photo, differing
/// values, max difference)` per photo, and the sha256 of the crop.
fn crops(pillow_major: u32) -> Vec<(String, usize, u8, String)> {
    let r = Reference::load();
    let (_d, f) = config(LARGE_PATCH14);
    let p = ClipJudge::read_processor(&f)
        .unwrap()
        .with_pillow_version(pillow_major);
    let mut out = vec![];
    for m in &r.photos {
        let name = m["name"].as_str().unwrap();
        let img = load_photo(m);
        let (ow, oh) = p.output_size(img.width(), img.height());
        assert_eq!(
            (u64::from(ow), u64::from(oh)),
            (
                m["resized_width"].as_u64().unwrap(),
                m["resized_height"].as_u64().unwrap()
            ),
            "{name}: resize target"
        );
        let crop = p.pixels_u8(&img).unwrap();
        assert_eq!(crop.dimensions(), (224, 224), "{name}");
        let got = chw(&crop);
        let want = if pillow_major < 13 {
            r.u8(&format!("{name}.u8_hfirst"))
                .unwrap_or_else(|| r.u8(&format!("{name}.u8")).unwrap())
        } else {
            r.u8(&format!("{name}.u8")).unwrap()
        };
        let diff: Vec<u8> = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).collect();
        out.push((
            name.to_string(),
            diff.iter().filter(|&&d| d > 0).count(),
            diff.iter().copied().max().unwrap_or(0),
            sha256(&got),
        ));
    }
    out
}

#[test]
fn resized_cropped_pixels_equal_clip_image_processor_pillow12_order() {
    // The judge's default: horizontal pass first (every Pillow up to 12.x).
    let r = Reference::load();
    let (_d, f) = config(LARGE_PATCH14);
    let p = ClipJudge::read_processor(&f).unwrap();
    assert_eq!(p, p.clone().with_pillow_version(12), "the default order");
    // The one photo where the orders differ: Pillow 13's crop is not what this order gives.
    let m = r
        .photos
        .iter()
        .find(|m| m["name"] == "hubble_240x560")
        .unwrap();
    let hfirst = chw(&p.pixels_u8(&load_photo(m)).unwrap());
    let vfirst = r.u8("hubble_240x560.u8").unwrap();
    let n = hfirst.iter().zip(vfirst).filter(|(a, b)| a != b).count();
    println!(
        "hubble_240x560: the two pass orders differ in {n} of {} values",
        vfirst.len()
    );
    assert!(n > 0);
    let mut bad = vec![];
    for (name, n, max, _) in crops(12) {
        println!("Pillow <= 12 order: {name}: {n} values differ, max {max}");
        if n > 0 {
            bad.push(format!("{name}: {n} values differ (max {max})"));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn resized_cropped_pixels_equal_clip_image_processor_pillow13_order() {
    let r = Reference::load();
    let mut bad = vec![];
    for ((name, n, max, sha), m) in crops(13).into_iter().zip(&r.photos) {
        println!("Pillow 13 order: {name}: {n} values differ, max {max}");
        assert_eq!(sha, m["u8_sha256"].as_str().unwrap(), "{name}: u8 sha256");
        if n > 0 {
            bad.push(format!("{name}: {n} values differ (max {max})"));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn pixel_values_equal_clip_image_processor_bit_for_bit() {
    let r = Reference::load();
    let (_d, f) = config(LARGE_PATCH14);
    // The fixture's floats are Pillow 13's (the order only matters for hubble_240x560).
    let p = ClipJudge::read_processor(&f)
        .unwrap()
        .with_pillow_version(13);
    let mut stored = 0;
    for m in &r.photos {
        let name = m["name"].as_str().unwrap();
        let (pv, h, w) = p.pixel_values(&load_photo(m)).unwrap();
        assert_eq!((h, w), (224, 224));
        let bytes: Vec<u8> = pv.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            sha256(&bytes),
            m["pixel_values_f32le_sha256"].as_str().unwrap(),
            "{name}: pixel_values sha256"
        );
        let sum: f64 = pv.iter().map(|&x| f64::from(x)).sum();
        let want_sum = m["pixel_values_sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-6 * want_sum.abs().max(1.0),
            "{name}: sum {sum} vs {want_sum}"
        );
        if let Some(want) = r.f32(name) {
            stored += 1;
            let max = pv
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let differ = pv
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            println!("{name}: pixel_values max abs difference {max:e}, {differ} differ");
            assert_eq!(differ, 0, "{name}: max abs difference {max}");
        }
    }
    assert_eq!(stored, 4, "float tensors in the fixture");
}

#[test]
fn transformers_5_composites_alpha_onto_white_which_the_judge_does_not() {
    // The spec's step 1 for transformers 5.x (PIL alpha_composite over opaque white), checked
    // on the RGBA photo: the fixture's `.u8_tf5` crop. fmn follows 4.x (alpha dropped).
    let r = Reference::load();
    let m = r
        .photos
        .iter()
        .find(|m| m["name"] == "astronaut_small_rgba")
        .unwrap();
    let rgba = image::open(fixtures().join(m["file"].as_str().unwrap()))
        .unwrap()
        .to_rgba8();
    let white = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let a = i64::from(p[3]);
        image::Rgb([0, 1, 2].map(|c| {
            if a == 0 {
                255
            } else {
                let t = 128 * (i64::from(p[c]) * a + 255 * (255 - a)) + 128 * 128;
                (((t >> 8) + t) >> 8 >> 7) as u8
            }
        }))
    });
    let (_d, f) = config(LARGE_PATCH14);
    let p = ClipJudge::read_processor(&f).unwrap();
    let tf5 = r.u8("astronaut_small_rgba.u8_tf5").unwrap();
    assert_eq!(chw(&p.pixels_u8(&white).unwrap()), tf5);
    assert_ne!(chw(&p.pixels_u8(&load_photo(m)).unwrap()), tf5);
}

#[test]
fn unsupported_settings_are_errors_naming_the_file_and_key() {
    let (_d, f) = config(&LARGE_PATCH14.replace("\"resample\": 3", "\"resample\": 0"));
    let e = ClipJudge::read_processor(&f).unwrap_err().to_string();
    assert!(e.contains(&f.display().to_string()), "{e}");
    assert!(e.contains("`resample` is 0 (NEAREST)"), "{e}");

    // A processor whose output is not the model's input size: the judge says so.
    let tiny = fixtures().join("clip-tiny");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 40}}"#,
    )
    .unwrap();
    let judge = ClipJudge::load(dir.path()).unwrap();
    let e = judge
        .pixels(&[RgbImage::new(50, 40)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
    assert!(e.contains("40x32"), "{e}");
}

/// By hand, against an installed Pillow: every convolution filter (`resample` 1–5), random
/// sizes (up and down, one or both axes), noise / 0–255 / gradients. Pillow's own
/// `resize((ow, oh))` is the Pillow ≥ 13 order; `resize((ow, h)).resize((ow, oh))` is exactly
/// the horizontal-first order of Pillow ≤ 12 (each one-axis resize is one uint8 pass).
///
/// ```text
/// python - DIR 1500 <<'PY'   # numpy + Pillow; writes DIR/index.json and PNGs
/// import json, os, sys, numpy as np; from PIL import Image
/// out, n = sys.argv[1], int(sys.argv[2]); os.makedirs(out, exist_ok=True)
/// rng = np.random.default_rng(1); cases = []
/// for i in range(n):
///     w, h = [int(x) for x in rng.integers(1, 260, 2)]
///     a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
///     ow, oh = [int(x) for x in rng.integers(1, 300, 2)]
///     f = i % 5 + 1; im = Image.fromarray(a); b = "c%04d" % i
///     im.save(f"{out}/{b}_in.png"); im.resize((ow, oh), f).save(f"{out}/{b}_p13.png")
///     im.resize((ow, h), f).resize((ow, oh), f).save(f"{out}/{b}_hfirst.png")
///     cases.append(dict(name=b, filter=f, out_w=ow, out_h=oh))
/// json.dump(cases, open(f"{out}/index.json", "w"))
/// PY
/// FMN_PIL_RESIZE_CHECK=DIR cargo test --workspace --test clip_preprocess -- --ignored
/// ```
#[test]
#[ignore = "needs FMN_PIL_RESIZE_CHECK=DIR made with Pillow (see the comment)"]
fn resampler_equals_pillow_on_random_sizes() {
    let dir = PathBuf::from(std::env::var("FMN_PIL_RESIZE_CHECK").unwrap());
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let png = |name: &str, tail: &str| {
        image::open(dir.join(format!("{name}_{tail}.png")))
            .unwrap()
            .to_rgb8()
    };
    let mut bad = vec![];
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (ow, oh) = (
            c["out_w"].as_u64().unwrap() as u32,
            c["out_h"].as_u64().unwrap() as u32,
        );
        let (_d, f) = config(&format!(r#"{{"resample": {}}}"#, c["filter"]));
        let p = ClipJudge::read_processor(&f).unwrap();
        let img = png(name, "in");
        for (major, tail) in [(13, "p13"), (12, "hfirst")] {
            let got = p
                .clone()
                .with_pillow_version(major)
                .resize_to(&img, ow, oh)
                .unwrap();
            let want = png(name, tail);
            if got != want {
                let n = got
                    .as_raw()
                    .iter()
                    .zip(want.as_raw())
                    .filter(|(a, b)| a != b)
                    .count();
                bad.push(format!(
                    "{name} filter {} {}x{} -> {ow}x{oh} Pillow {major}: {n} values differ",
                    c["filter"],
                    img.width(),
                    img.height()
                ));
            }
        }
    }
    println!("{} cases x 2 orders, {} differ", cases.len(), bad.len());
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The issue's bar for CLIP scores (1e-4) on the tiny CLIPModel fixture
/// (tests/fixtures/gen/make_clip_fixture.py, transformers 5.24.0 with torch). Its images are
/// 32x32, the model's input size, so resize and crop are identities there: this measures the
/// model and the rescale/normalise, the tests above the resize.
#[test]
fn clip_scores_within_1e_4_of_transformers_on_the_tiny_model() {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("clip-tiny-reference.json")).unwrap(),
    )
    .unwrap();
    let judge = ClipJudge::load(&fixtures().join("clip-tiny")).unwrap();
    let imgs: Vec<RgbImage> = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            image::open(fixtures().join("clip-tiny").join(p.as_str().unwrap()))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let prompts: Vec<&str> = r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let rows = |k: &str| -> Vec<Vec<f64>> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (ie, te) = (rows("image_embeds"), rows("text_embeds"));
    let scores = judge.clip_scores(&imgs, &prompts).unwrap().unwrap();
    let mut worst = 0f64;
    for (i, s) in scores.iter().enumerate() {
        let cos: f64 = ie[i].iter().zip(&te[i]).map(|(a, b)| a * b).sum();
        worst = worst.max((s - 100.0 * cos.max(0.0)).abs());
    }
    println!("CLIP scores vs transformers: max abs difference {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}
