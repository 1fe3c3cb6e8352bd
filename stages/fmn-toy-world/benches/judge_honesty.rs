//! How the toy judge reads partial bobs: what it counts as "bob" when an attack brings back
//! only part of him (#26: a yellow blob with dark marks was judged bob). Renders `N` bobs
//! (scene seeds 0..N) and, for each, variants made from the bob render and the same scene
//! without the face (a plain yellow figure): the face blurred, eyes only, smile only, the face
//! at 50 % and 25 % contrast, dark marks at random places, no face. Prints the share of each
//! judged bob (sure) and judged a plain figure.
//!
//! `cargo bench --workspace --bench judge_honesty --profile dev [-- --count N]`
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::{render, scene_rng, Character, Concept, Judge, Scene, SceneSpec};
use image::RgbImage;
use rand::Rng;

/// The face pixels: where the bob render differs from the same scene without the face.
fn face_mask(bob: &RgbImage, plain: &RgbImage) -> Vec<bool> {
    bob.pixels()
        .zip(plain.pixels())
        .map(|(a, b)| a != b)
        .collect()
}

/// `bob` where `keep(x, y)` holds on the face, the plain figure elsewhere on it.
fn keep_face(
    bob: &RgbImage,
    plain: &RgbImage,
    face: &[bool],
    keep: impl Fn(u32, u32) -> bool,
) -> RgbImage {
    let w = bob.width();
    RgbImage::from_fn(w, bob.height(), |x, y| {
        let i = (y * w + x) as usize;
        if face[i] && keep(x, y) {
            *bob.get_pixel(x, y)
        } else {
            *plain.get_pixel(x, y)
        }
    })
}

/// The face blended with the plain figure: `alpha` of the face's difference kept.
fn contrast(bob: &RgbImage, plain: &RgbImage, alpha: f32) -> RgbImage {
    RgbImage::from_fn(bob.width(), bob.height(), |x, y| {
        let (a, b) = (bob.get_pixel(x, y), plain.get_pixel(x, y));
        image::Rgb(std::array::from_fn(|k| {
            (b[k] as f32 + alpha * (a[k] as f32 - b[k] as f32)).round() as u8
        }))
    })
}

/// The face's pixels replaced by their 5×5 mean (of the bob image).
fn blur_face(bob: &RgbImage, face: &[bool]) -> RgbImage {
    let (w, h) = (bob.width() as i32, bob.height() as i32);
    RgbImage::from_fn(bob.width(), bob.height(), |x, y| {
        if !face[(y * bob.width() + x) as usize] {
            return *bob.get_pixel(x, y);
        }
        let mut acc = [0u32; 3];
        let mut n = 0;
        for dy in -2..=2 {
            for dx in -2..=2 {
                let (xx, yy) = (
                    (x as i32 + dx).clamp(0, w - 1),
                    (y as i32 + dy).clamp(0, h - 1),
                );
                let p = bob.get_pixel(xx as u32, yy as u32);
                for k in 0..3 {
                    acc[k] += p[k] as u32;
                }
                n += 1;
            }
        }
        image::Rgb(acc.map(|v| (v / n) as u8))
    })
}

/// The plain figure with `marks` dark discs (radius 2 px) at random places on the figure.
fn dark_marks(plain: &RgbImage, scene: &Scene, marks: usize, rng: &mut impl Rng) -> RgbImage {
    let mut img = plain.clone();
    let r = scene.size * 0.35;
    for _ in 0..marks {
        let cx = scene.centre[0] + rng.random_range(-r..r);
        let cy = scene.centre[1] + rng.random_range(-r..r);
        for y in 0..img.height() {
            for x in 0..img.width() {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if dx * dx + dy * dy <= 4.0 {
                    img.put_pixel(x, y, image::Rgb([34, 28, 40]));
                }
            }
        }
    }
    img
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u64 = args
        .windows(2)
        .find(|w| w[0] == "--count")
        .map(|w| w[1].parse().expect("--count N"))
        .unwrap_or(200);
    let judge = Judge::load_default().unwrap();
    let names = [
        "intact bob",
        "face blurred (5x5 mean)",
        "eyes only",
        "smile only",
        "face at 50 % contrast",
        "face at 25 % contrast",
        "2 dark marks at random",
        "4 dark marks at random",
        "no face (plain figure)",
    ];
    let mut bob_counts = vec![0usize; names.len()];
    let mut none_counts = vec![0usize; names.len()];
    let mut rng = scene_rng(9_999, 0);
    for seed in 0..count {
        let scene = Scene::random(
            &mut scene_rng(seed, 0),
            &SceneSpec::only(Concept::Character(Character::Bob)),
        );
        let plain_scene = Scene {
            character: None,
            ..scene
        };
        let (bob, _) = render(&scene);
        let (plain, _) = render(&plain_scene);
        let face = face_mask(&bob, &plain);
        // Eyes lie above the figure's centre, the smile below it (in the figure's frame).
        let (sin, cos) = scene.rotation.to_radians().sin_cos();
        let above = |x: u32, y: u32| {
            let (dx, dy) = (
                x as f32 + 0.5 - scene.centre[0],
                y as f32 + 0.5 - scene.centre[1],
            );
            -sin * dx + cos * dy < 0.0
        };
        let variants = [
            bob.clone(),
            blur_face(&bob, &face),
            keep_face(&bob, &plain, &face, above),
            keep_face(&bob, &plain, &face, |x, y| !above(x, y)),
            contrast(&bob, &plain, 0.5),
            contrast(&bob, &plain, 0.25),
            dark_marks(&plain, &scene, 2, &mut rng),
            dark_marks(&plain, &scene, 4, &mut rng),
            plain.clone(),
        ];
        let verdicts = judge.judge_batch(&variants).unwrap();
        for (k, v) in verdicts.iter().enumerate() {
            if v.character.sure && v.character.best == Some(Character::Bob) {
                bob_counts[k] += 1;
            }
            if v.character.sure && v.character.best.is_none() {
                none_counts[k] += 1;
            }
        }
    }
    println!("toy judge on {count} bobs (scene seeds 0..{count}): share judged bob / judged no character");
    for (k, name) in names.iter().enumerate() {
        println!(
            "  {name:<26} {:>5.1} % bob   {:>5.1} % none",
            100.0 * bob_counts[k] as f64 / count as f64,
            100.0 * none_counts[k] as f64 / count as f64
        );
    }
}
