//! The figure mask that `fmn-toy quality` measures attention against agrees with the renderer's
//! exact masks on freshly rendered scenes.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_toy::quality::figure_mask;
use fmn_toy_world::{render, scene_rng, Scene, SceneSpec};

#[test]
fn figure_mask_matches_rendered_masks() {
    let mut total_iou = 0.0;
    let n = 200;
    for i in 0..n {
        let mut rng = scene_rng(9, i);
        let scene = Scene::random(&mut rng, &SceneSpec::default());
        let (image, exact) = render(&scene);
        let ours = figure_mask(&image, 40);
        let (mut inter, mut union) = (0u32, 0u32);
        for (a, b) in ours.pixels().zip(exact.pixels()) {
            let (a, b) = (a[0] > 127, b[0] > 127);
            inter += (a && b) as u32;
            union += (a || b) as u32;
        }
        total_iou += inter as f64 / union.max(1) as f64;
    }
    let mean = total_iou / n as f64;
    println!("mean IoU {mean:.3}");
    assert!(mean > 0.9, "mean IoU {mean}");
}
