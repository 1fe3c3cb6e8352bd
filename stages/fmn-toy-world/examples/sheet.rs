//! Writes a contact sheet of rendered scenes (and, below each row, the same scenes degraded
//! as in the judge's training) for eyeballing: `cargo run -p fmn-toy-world --example sheet -- OUT.png [SEED] [--only CONCEPT]`.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy_world::augment::{augment, Augment};
use fmn_toy_world::{render, scene_rng, Concept, Scene, SceneSpec};
use image::{imageops, RgbImage};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().cloned().unwrap_or_else(|| "sheet.png".into());
    let seed: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let spec = match args.iter().position(|a| a == "--only") {
        Some(i) => SceneSpec::only(args[i + 1].parse::<Concept>()?),
        None => SceneSpec::default(),
    };
    let (cols, rows, scale) = (8u32, 4u32, 3u32);
    let cell = 64 * scale;
    let mut sheet = RgbImage::new(cols * cell, rows * 2 * cell);
    for r in 0..rows {
        for c in 0..cols {
            let mut rng = scene_rng(seed, (r * cols + c) as u64);
            let scene = Scene::random(&mut rng, &spec);
            let img = render(&scene).0;
            let deg = augment(&img, &mut rng, &Augment::default().always());
            for (k, im) in [img, deg].iter().enumerate() {
                let big = imageops::resize(im, cell, cell, imageops::FilterType::Nearest);
                imageops::replace(
                    &mut sheet,
                    &big,
                    (c * cell) as i64,
                    ((2 * r + k as u32) * cell) as i64,
                );
            }
        }
    }
    sheet.save(&out)?;
    Ok(())
}
