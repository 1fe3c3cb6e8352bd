//! Measures a judge on held-out renders and lists the ones it gets wrong:
//! `cargo run -p fmn-toy-world --example diag -- [--weights FILE] [--seed S] [--count N] [--degraded]`.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::augment::{augment, Augment};
use fmn_toy_world::judge::{evaluate, Judge};
use fmn_toy_world::{render, scene_rng, Scene, SceneSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let judge = match value("--weights") {
        Some(p) => Judge::load(std::path::Path::new(p))?,
        None => Judge::load_default()?,
    };
    let seed: u64 = value("--seed")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4242);
    let count: u64 = value("--count")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let aug = if args.iter().any(|a| a == "--degraded") {
        Augment::default().always()
    } else {
        Augment::none()
    };
    let mut wrong = 0;
    for i in 0..count {
        let mut rng = scene_rng(seed, i);
        let scene = Scene::random(&mut rng, &SceneSpec::default());
        let img = augment(&render(&scene).0, &mut rng, &aug);
        let v = judge.judge(&img)?;
        let ok = v.object.label() == Some(scene.object)
            && v.colour.label() == Some(scene.colour)
            && v.striped.label() == Some(scene.striped)
            && v.character.label() == Some(scene.character);
        if !ok {
            wrong += 1;
            println!(
                "{i}: judged {} | truth {:?} {:?} size {:.1} rotation {:.1} striped {} character {:?} | {:?}",
                v.description(),
                scene.colour,
                scene.object,
                scene.size,
                scene.rotation,
                scene.striped,
                scene.character,
                v.probabilities
            );
        }
    }
    println!("{wrong}/{count} images with some attribute wrong");
    println!("{:?}", evaluate(&judge, seed, count as usize, &aug)?);
    Ok(())
}
