//! The committed judge on freshly rendered images with held-out seeds.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::augment::{augment, garbage, Augment};
use fmn_toy_world::judge::{evaluate, Judge};
use fmn_toy_world::{
    render, scene_rng, Background, Character, Colour, Concept, Object, Scene, SceneSpec,
};
use image::{Rgb, RgbImage};
use std::time::Instant;

/// Not used in training (training draws from a salted seed) nor in `train-judge`'s report.
const HELD_OUT_SEED: u64 = 20_250_917;

#[test]
fn judge_is_right_on_fresh_renders() {
    let judge = Judge::load_default().unwrap();
    let start = Instant::now();
    let acc = evaluate(&judge, HELD_OUT_SEED, 400, &Augment::none()).unwrap();
    eprintln!(
        "clean held-out renders ({:.1} s): {acc:?}",
        start.elapsed().as_secs_f32()
    );
    assert_eq!(acc.count, 400);
    for (name, value) in [
        ("object", acc.object),
        ("colour", acc.colour),
        ("striped", acc.striped),
        ("character", acc.character),
        ("figure", acc.figure),
    ] {
        assert!(value >= 0.98, "{name} accuracy {value} < 0.98");
    }
    assert!(
        acc.garbage_rejected >= 0.9,
        "garbage rejected {}",
        acc.garbage_rejected
    );
}

#[test]
fn judge_copes_with_degraded_renders() {
    let judge = Judge::load_default().unwrap();
    let acc = evaluate(&judge, HELD_OUT_SEED + 1, 200, &Augment::default().always()).unwrap();
    eprintln!("degraded held-out renders: {acc:?}");
    assert!(acc.min_attribute() >= 0.9, "{acc:?}");
}

#[test]
fn characters_come_with_their_object_and_colour() {
    let judge = Judge::load_default().unwrap();
    for c in Character::ALL {
        let images: Vec<RgbImage> = (0..40)
            .map(|i| {
                render(&Scene::random(
                    &mut scene_rng(HELD_OUT_SEED + 2, i),
                    &SceneSpec::only(Concept::Character(*c)),
                ))
                .0
            })
            .collect();
        for v in judge.judge_batch(&images).unwrap() {
            assert!(v.shows(Concept::Character(*c)), "{c}: {}", v.description());
            assert!(
                v.shows(Concept::Object(c.object())),
                "{c}: {}",
                v.description()
            );
            assert!(
                v.shows(Concept::Colour(c.colour())),
                "{c}: {}",
                v.description()
            );
            assert!(!v.shows(Concept::Stripes));
        }
    }
    // The body without the face is not the character.
    let decoy = Scene {
        object: Object::Circle,
        colour: Colour::Yellow,
        striped: false,
        character: None,
        size: 44.0,
        centre: [32.0, 32.0],
        rotation: 0.0,
        background: Background::White,
    };
    let v = judge.judge(&render(&decoy).0).unwrap();
    assert_eq!(v.character.label(), Some(None), "{}", v.description());
    assert_eq!(v.description(), "yellow circle");
}

#[test]
fn blank_and_garbage_images_are_unknown() {
    let judge = Judge::load_default().unwrap();
    let mut images: Vec<RgbImage> = Background::ALL
        .iter()
        .map(|b| RgbImage::from_pixel(64, 64, Rgb(b.rgb())))
        .collect();
    images.push(RgbImage::from_pixel(64, 64, Rgb([0, 0, 0])));
    images.push(RgbImage::from_pixel(64, 64, Rgb([255, 255, 255])));
    let mut rng = scene_rng(HELD_OUT_SEED + 3, 0);
    images.push(RgbImage::from_fn(64, 64, |_, _| {
        Rgb(rand::Rng::random(&mut rng))
    }));
    for v in judge.judge_batch(&images).unwrap() {
        assert!(v.is_unknown(), "{} {:?}", v.description(), v.probabilities);
        assert_eq!(v.object.label(), None);
        assert_eq!(v.character.label(), None);
        assert_eq!(v.description(), "unknown (no figure)");
    }
    let junk: Vec<RgbImage> = (0..200)
        .map(|i| {
            let mut rng = scene_rng(HELD_OUT_SEED + 4, i);
            let g = garbage(&mut rng);
            augment(&g, &mut rng, &Augment::default())
        })
        .collect();
    let rejected = judge
        .judge_batch(&junk)
        .unwrap()
        .iter()
        .filter(|v| v.is_unknown())
        .count();
    assert!(
        rejected >= 190,
        "only {rejected}/200 garbage images reported unknown"
    );
}

#[test]
fn batch_equals_single_and_other_sizes_work() {
    let judge = Judge::load_default().unwrap();
    let images: Vec<RgbImage> = (0..70)
        .map(|i| {
            render(&Scene::random(
                &mut scene_rng(HELD_OUT_SEED + 5, i),
                &SceneSpec::default(),
            ))
            .0
        })
        .collect();
    let batch = judge.judge_batch(&images).unwrap();
    assert_eq!(batch.len(), 70);
    for i in [0, 33, 69] {
        let single = judge.judge(&images[i]).unwrap();
        assert_eq!(single.object.best, batch[i].object.best);
        assert!((single.probabilities.figure - batch[i].probabilities.figure).abs() < 1e-4);
    }
    // A 128×128 upscale is judged like the original.
    let big = image::imageops::resize(&images[0], 128, 128, image::imageops::FilterType::Nearest);
    assert_eq!(judge.judge(&big).unwrap().object.best, batch[0].object.best);
    assert!(judge.judge_batch(&[]).unwrap().is_empty());
}

#[test]
fn bad_weights_are_an_error() {
    assert!(Judge::from_bytes(b"not safetensors", "junk").is_err());
    let err = Judge::load(std::path::Path::new("/nonexistent/judge.safetensors")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/judge.safetensors"),
        "{err}"
    );
    let judge = Judge::load_default().unwrap();
    assert!(
        judge.metadata().contains_key("command"),
        "{:?}",
        judge.metadata()
    );
}
