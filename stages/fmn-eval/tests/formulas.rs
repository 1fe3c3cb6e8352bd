//! The metric formulas on hand-computed cases.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_eval::drift;
use fmn_eval::items::{Drift, Item, Side};
use fmn_eval::metrics::{self, accuracy, h_concept, h_overall};
use fmn_eval::suite::Group;
use image::RgbImage;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn harmonic_scores_match_mace_by_hand() {
    // Acc_e = 0.2, Acc_s = 0.8, Acc_g = 0.4:
    // H_o = 3 / (1/0.8 + 1/0.8 + 1/0.6) = 3 / (1.25 + 1.25 + 1.666…) = 0.72
    close(h_overall(0.2, 0.8, 0.4), 3.0 / (1.25 + 1.25 + 5.0 / 3.0));
    close(h_overall(0.2, 0.8, 0.4), 0.72);
    // H_c = 2 / (1/0.8 + 1/0.8) = 0.8
    close(h_concept(0.2, 0.8), 0.8);
    // Acc_e = 0.5, Acc_s = 1: H_c = 2 / (2 + 1) = 2/3
    close(h_concept(0.5, 1.0), 2.0 / 3.0);
    // Any term at 0 (nothing forgotten, or nothing preserved) gives 0.
    close(h_overall(1.0, 0.9, 0.0), 0.0);
    close(h_concept(0.0, 0.0), 0.0);
    close(h_overall(0.0, 1.0, 0.0), 1.0);
}

#[test]
fn accuracy_is_a_share_of_images() {
    assert_eq!(accuracy(3, 4), Some(0.75));
    assert_eq!(accuracy(0, 0), None);
}

fn side(correct: bool, share: Option<f64>) -> Side {
    Side {
        correct,
        verdict: String::new(),
        attention_share: share,
        image: String::new(),
        heatmap: None,
        clip_score: None,
    }
}

fn item(
    group: Group,
    before: bool,
    after: bool,
    drift: (f64, f64),
    share: Option<(f64, f64)>,
) -> Item {
    Item {
        concept: "bob".into(),
        group,
        prompt: "p".into(),
        seed: Some(0),
        image_index: 0,
        before: side(before, share.map(|s| s.0)),
        after: side(after, share.map(|s| s.1)),
        drift: Drift {
            mean_abs_diff: drift.0,
            ssim: drift.1,
        },
    }
}

#[test]
fn concept_metrics_by_hand() {
    use Group::*;
    let items = vec![
        // erased: 4 images, 4 correct before, 1 after -> Acc_e 1.0 -> 0.25
        item(Erased, true, false, (0.3, 0.1), Some((0.2, 0.1))),
        item(Erased, true, false, (0.3, 0.1), Some((0.4, 0.1))),
        item(Erased, true, false, (0.3, 0.1), None),
        item(Erased, true, true, (0.3, 0.1), Some((0.3, 0.1))),
        // synonyms: 2 images, 2 before, 1 after -> 1.0 -> 0.5
        item(Synonym, true, true, (0.0, 1.0), Some((0.1, 0.05))),
        item(Synonym, true, false, (0.0, 1.0), None),
        // preserved: 5 images, 5 before, 4 after -> 1.0 -> 0.8
        item(Preserved, true, true, (0.0, 1.0), None),
        item(Preserved, true, true, (0.1, 0.5), None),
        item(Preserved, true, true, (0.0, 1.0), None),
        item(Preserved, true, true, (0.0, 1.0), None),
        item(Preserved, true, false, (0.2, 0.5), None),
    ];
    let m = metrics::concept_metrics("bob", &items);
    assert_eq!(
        (m.images.erased, m.images.synonym, m.images.preserved),
        (4, 2, 5)
    );
    let e = m.acc_e.unwrap();
    let g = m.acc_g.unwrap();
    let s = m.acc_s.unwrap();
    assert_eq!((e.before, e.after), (1.0, 0.25));
    assert_eq!((g.before, g.after), (1.0, 0.5));
    assert_eq!((s.before, s.after), (1.0, 0.8));
    close(m.forgetting.unwrap(), 0.75);
    // after: H_o = 3 / (1/0.75 + 1/0.8 + 1/0.5) = 3 / (4/3 + 1.25 + 2) = 0.654545…
    close(m.h_o.unwrap().after, 3.0 / (4.0 / 3.0 + 1.25 + 2.0));
    // before: 1 − Acc_e = 0 -> 0
    close(m.h_o.unwrap().before, 0.0);
    // after: H_c = 2 / (4/3 + 1.25) = 0.774193…
    close(m.h_c.unwrap().after, 2.0 / (4.0 / 3.0 + 1.25));
    // drift over the 5 preserved images only: MAD (0 + .1 + 0 + 0 + .2)/5 = 0.06,
    // SSIM (1 + .5 + 1 + 1 + .5)/5 = 0.8
    let d = m.drift.unwrap();
    close(d.mean_abs_diff, 0.06);
    close(d.ssim, 0.8);
    assert_eq!(d.images, 5);
    // attention over erased + synonym images with a share on both sides:
    // before (0.2 + 0.4 + 0.3 + 0.1)/4 = 0.25, after (0.1·3 + 0.05)/4 = 0.0875
    let a = m.attention_share.unwrap();
    close(a.before, 0.25);
    close(a.after, 0.0875);
    assert!(m.clip_score.is_none());
}

#[test]
fn metrics_without_synonyms_leave_h_o_out() {
    let items = vec![
        item(Group::Erased, true, false, (0.0, 1.0), None),
        item(Group::Preserved, true, true, (0.0, 1.0), None),
    ];
    let m = metrics::concept_metrics("bob", &items);
    assert!(m.acc_g.is_none());
    assert!(m.h_o.is_none());
    close(m.h_c.unwrap().after, 1.0);
    assert!(m.attention_share.is_none());
    let line = metrics::summary_line(&m);
    assert_eq!(
        line,
        "bob: Acc_e 1.00 -> 0.00 (forgetting 1.00), Acc_g n/a, Acc_s 1.00 -> 1.00, H_c 1.000, drift MAD 0.0000 SSIM 1.000"
    );
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
    RgbImage::from_pixel(w, h, image::Rgb(rgb))
}

#[test]
fn mean_abs_diff_by_hand() {
    let a = solid(4, 4, [10, 20, 30]);
    let b = solid(4, 4, [40, 20, 0]);
    // per pixel (30 + 0 + 30) / 3 = 20 -> 20/255
    close(drift::mean_abs_diff(&a, &b).unwrap(), 20.0 / 255.0);
    assert!(drift::mean_abs_diff(&a, &solid(4, 5, [0; 3])).is_err());
}

#[test]
fn ssim_of_constant_images_by_hand() {
    // Constant grey images 100 and 150 (luma = value): variances 0, so
    // SSIM = (2·100·150 + C1) / (100² + 150² + C1) with C1 = (0.01·255)² = 6.5025
    let a = solid(9, 9, [100, 100, 100]);
    let b = solid(9, 9, [150, 150, 150]);
    let c1 = 6.5025;
    close(
        drift::ssim(&a, &b).unwrap(),
        (30000.0 + c1) / (32500.0 + c1),
    );
    close(drift::ssim(&a, &a).unwrap(), 1.0);
}

#[test]
fn ssim_of_one_window_by_hand() {
    // A 7×7 image (one window): x a 0/200 checkerboard (200 where r + c is even: 25 pixels,
    // 0 elsewhere: 24) and y = 255 − x. The luma of a grey pixel is its value.
    let mut x = RgbImage::new(7, 7);
    let mut y = RgbImage::new(7, 7);
    for (c, r, p) in x.enumerate_pixels_mut() {
        let v = if (r + c) % 2 == 0 { 200 } else { 0 };
        *p = image::Rgb([v, v, v]);
        y.put_pixel(c, r, image::Rgb([255 - v, 255 - v, 255 - v]));
    }
    // x: 25 of 49 at 200 -> mean 5000/49; E[x²] = 25·40000/49; y = 255 − x:
    // mean 255 − mx, var_y = var_x, cov = −var_x.
    let n = 49.0;
    let mx = 25.0 * 200.0 / n;
    let vx = 25.0 * 40000.0 / n - mx * mx;
    let my = 255.0 - mx;
    let (c1, c2) = (6.5025, 58.5225);
    let want =
        ((2.0 * mx * my + c1) * (-2.0 * vx + c2)) / ((mx * mx + my * my + c1) * (2.0 * vx + c2));
    let got = drift::ssim(&x, &y).unwrap();
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    assert!(got < 0.0);
}
