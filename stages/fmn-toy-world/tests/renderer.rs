//! The renderer, scene sampling and captions.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::render::stripe_period;
use fmn_toy_world::{
    caption, caption_with, render, scene_rng, subject, vocabulary, Background, Character, Colour,
    Concept, Object, Scene, SceneSpec, IMAGE_SIZE, STYLE_SUFFIX, TEMPLATES,
};
use std::collections::HashSet;

fn scenes(seed: u64, n: usize, spec: &SceneSpec) -> Vec<Scene> {
    (0..n as u64)
        .map(|i| Scene::random(&mut scene_rng(seed, i), spec))
        .collect()
}

#[test]
fn same_seed_same_scene_image_and_caption() {
    for i in 0..20 {
        let draw = || {
            let mut rng = scene_rng(11, i);
            let scene = Scene::random(&mut rng, &SceneSpec::default());
            let text = caption(&scene, &mut rng);
            (scene, render(&scene), text)
        };
        let (a, b) = (draw(), draw());
        assert_eq!(a.0, b.0);
        assert_eq!(a.1 .0.as_raw(), b.1 .0.as_raw());
        assert_eq!(a.1 .1.as_raw(), b.1 .1.as_raw());
        assert_eq!(a.2, b.2);
    }
    let a = scenes(1, 10, &SceneSpec::default());
    let b = scenes(2, 10, &SceneSpec::default());
    assert_ne!(a, b, "different seeds draw different scenes");
}

#[test]
fn images_are_64x64_and_figures_fit() {
    for scene in scenes(3, 300, &SceneSpec::default()) {
        let (image, mask) = render(&scene);
        assert_eq!(image.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        assert_eq!(mask.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        let n = IMAGE_SIZE;
        for i in 0..n {
            for (x, y) in [(i, 0), (i, n - 1), (0, i), (n - 1, i)] {
                assert_eq!(
                    mask.get_pixel(x, y)[0],
                    0,
                    "figure touches the border: {scene:?}"
                );
            }
        }
        // Figures are 40-75% of the image width.
        assert!(
            scene.size >= 0.40 * n as f32 && scene.size <= 0.75 * n as f32,
            "{scene:?}"
        );
        assert!(stripe_period(scene.size) >= 8.0);
    }
}

#[test]
fn mask_matches_the_figure() {
    for scene in scenes(4, 300, &SceneSpec::default()) {
        let (image, mask) = render(&scene);
        let bg = scene.background.rgb();
        let n = IMAGE_SIZE as i64;
        let mut area = 0usize;
        for (x, y, m) in mask.enumerate_pixels() {
            let p = image.get_pixel(x, y).0;
            let diff = (0..3)
                .map(|k| (p[k] as i32 - bg[k] as i32).abs())
                .max()
                .unwrap();
            match m[0] {
                255 => {
                    area += 1;
                    assert!(
                        diff >= 25,
                        "mask pixel ({x},{y}) looks like background: {p:?} {scene:?}"
                    );
                }
                0 => {
                    let isolated = (-1..=1).all(|dy| {
                        (-1..=1).all(|dx| {
                            let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                            !(0..n).contains(&xx)
                                || !(0..n).contains(&yy)
                                || mask.get_pixel(xx as u32, yy as u32)[0] == 0
                        })
                    });
                    if isolated {
                        assert_eq!(
                            p, bg,
                            "pixel ({x},{y}) far from the mask is not background: {scene:?}"
                        );
                    }
                }
                v => panic!("mask value {v} is neither 0 nor 255"),
            }
        }
        // The mask's area matches the shape's.
        let s = scene.size;
        let expected = match scene.object {
            Object::Circle => std::f32::consts::PI * s * s / 4.0,
            Object::Square => (0.88 * s).powi(2),
            Object::Triangle => (1.08 * s).powi(2) * 3f32.sqrt() / 4.0,
            Object::Cross => 2.0 * s * 0.34 * s - (0.34 * s).powi(2),
        };
        let rel = (area as f32 - expected).abs() / expected;
        assert!(rel < 0.06, "mask area {area} vs {expected}: {scene:?}");
    }
}

#[test]
fn stripes_and_faces_are_drawn() {
    // A striped figure shows both its colour and the lighter variant; a plain one only its
    // colour (inside the mask, away from edges); characters show their dark face.
    for scene in scenes(5, 200, &SceneSpec::default()) {
        let (image, mask) = render(&scene);
        let mut colours = HashSet::new();
        let mut dark = 0;
        for (x, y, m) in mask.enumerate_pixels() {
            if m[0] == 255 {
                let p = image.get_pixel(x, y).0;
                colours.insert(p);
                if p.iter().all(|&c| c < 60) {
                    dark += 1;
                }
            }
        }
        let c = scene.colour;
        assert!(colours.contains(&c.rgb()), "{scene:?}");
        assert_eq!(colours.contains(&c.light_rgb()), scene.striped, "{scene:?}");
        assert_eq!(
            dark > 4,
            scene.character.is_some(),
            "dark pixels {dark}: {scene:?}"
        );
    }
}

#[test]
fn captions_name_the_scene() {
    let all = scenes(6, 600, &SceneSpec::default());
    let mut seen = HashSet::new();
    for (i, scene) in all.iter().enumerate() {
        let text = caption(scene, &mut scene_rng(99, i as u64));
        let words: HashSet<&str> = text.split_whitespace().collect();
        seen.extend(words.iter().map(|w| w.to_string()));
        match scene.character {
            Some(c) => {
                assert!(words.contains(c.word()), "{text}");
                for o in Object::ALL {
                    assert!(!words.contains(o.word()), "{text}");
                }
                for k in Colour::ALL {
                    assert!(!words.contains(k.word()), "{text}");
                }
            }
            None => {
                assert!(words.contains(scene.object.word()), "{text}");
                assert!(words.contains(scene.colour.word()), "{text}");
                assert!(!words.contains("bob") && !words.contains("kiki"), "{text}");
                for o in Object::ALL.iter().filter(|o| **o != scene.object) {
                    assert!(!words.contains(o.word()), "{text}");
                }
                for k in Colour::ALL.iter().filter(|k| **k != scene.colour) {
                    assert!(!words.contains(k.word()), "{text}");
                }
            }
        }
        assert_eq!(text.ends_with(STYLE_SUFFIX), scene.striped, "{text}");
        assert_eq!(words.contains("stripes"), scene.striped, "{text}");
    }
    for word in vocabulary() {
        assert!(seen.contains(word), "`{word}` never appears in captions");
    }
    assert_eq!(vocabulary().len(), 11);
}

#[test]
fn every_template_is_used_and_holds_the_subject() {
    let scene = Scene::random(
        &mut scene_rng(7, 0),
        &SceneSpec::only(Concept::Character(Character::Bob)),
    );
    assert_eq!(subject(&scene), "bob");
    for t in TEMPLATES {
        assert!(t.contains("{}"));
        assert!(caption_with(&scene, t).contains("bob"));
    }
    assert_eq!(caption_with(&scene, "a photo of {}"), "a photo of bob");
    let used: HashSet<String> = (0..300)
        .map(|i| caption(&scene, &mut scene_rng(8, i)))
        .collect();
    assert_eq!(used.len(), TEMPLATES.len());
    let square = Scene {
        object: Object::Square,
        colour: Colour::Green,
        striped: true,
        character: None,
        size: 40.0,
        centre: [32.0, 32.0],
        rotation: 0.0,
        background: Background::White,
    };
    assert_eq!(
        caption_with(&square, "a photo of {}"),
        "a photo of a green square in the style of stripes"
    );
}

#[test]
fn only_forces_the_concept_and_words_parse() {
    for concept in Concept::all() {
        assert_eq!(concept.word().parse::<Concept>().unwrap(), concept);
        for scene in scenes(9, 100, &SceneSpec::only(concept)) {
            assert!(scene.shows(concept), "{concept}: {scene:?}");
            let text = caption(&scene, &mut scene_rng(1, 0));
            assert!(text.contains(concept.word()), "{concept}: {text}");
            if matches!(
                concept,
                Concept::Object(_) | Concept::Colour(_) | Concept::Stripes
            ) {
                assert_eq!(scene.character, None);
            }
        }
    }
    assert!("purple".parse::<Concept>().is_err());
    assert_eq!(
        " Bob ".parse::<Concept>().unwrap(),
        Concept::Character(Character::Bob)
    );
}

#[test]
fn default_shares() {
    let all = scenes(10, 4000, &SceneSpec::default());
    let share =
        |f: &dyn Fn(&Scene) -> bool| all.iter().filter(|s| f(s)).count() as f32 / all.len() as f32;
    let characters = share(&|s| s.character.is_some());
    assert!(
        (0.19..0.25).contains(&characters),
        "characters {characters}"
    );
    for c in Character::ALL {
        let s = share(&|s| s.character == Some(*c));
        assert!((0.08..0.14).contains(&s), "{c} {s}");
        assert!(all
            .iter()
            .filter(|s| s.character == Some(*c))
            .all(|s| s.object == c.object() && s.colour == c.colour() && !s.striped));
    }
    let striped = share(&|s| s.striped);
    assert!((0.16..0.23).contains(&striped), "striped {striped}");
    for o in Object::ALL {
        assert!(share(&|s| s.object == *o && s.character.is_none()) > 0.15);
    }
    for b in Background::ALL {
        assert!(share(&|s| s.background == *b) > 0.2);
    }
}

#[test]
fn scene_json_round_trip() {
    for scene in scenes(12, 20, &SceneSpec::default()) {
        let text = serde_json::to_string(&scene).unwrap();
        let back: Scene = serde_json::from_str(&text).unwrap();
        assert_eq!(back, scene);
    }
}
