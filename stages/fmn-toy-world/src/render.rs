//! Draws a [`Scene`]: an anti-aliased figure on its background, and the figure's exact mask.
//!
//! Shapes, in the figure's own frame (origin at the bounding-box centre, y down, `s` = size):
//! - circle: diameter `s`;
//! - square: side `0.88 s`;
//! - triangle: equilateral, apex up, side `1.08 s`;
//! - cross: a plus sign with arms `s` long and `0.34 s` thick.
//!
//! Stripes run at 45° in the figure's frame, alternating the colour with its lighter variant
//! ([`Colour::light_rgb`]), period `clamp(0.26 s, 8, 12)` pixels. bob has two dark eyes and a
//! smile; kiki one dark eye. The mask is 255 where at least half of a pixel is covered by the
//! figure (the face counts as figure), else 0.
use crate::scene::{Character, Colour, Object, Scene, IMAGE_SIZE};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// Subsamples per pixel side (SS×SS samples per pixel).
const SS: usize = 4;
const FACE: [u8; 3] = [34, 28, 40];

const SQUARE_SIDE: f32 = 0.88;
const TRIANGLE_SIDE: f32 = 1.08;
const CROSS_THICKNESS: f32 = 0.34;

fn triangle_height(s: f32) -> f32 {
    TRIANGLE_SIDE * s * 3f32.sqrt() / 2.0
}

/// The corners of a polygonal shape in its own frame (empty for the circle).
pub(crate) fn outline(object: Object, s: f32) -> Vec<[f32; 2]> {
    match object {
        Object::Circle => Vec::new(),
        Object::Square => {
            let h = SQUARE_SIDE * s / 2.0;
            vec![[-h, -h], [h, -h], [h, h], [-h, h]]
        }
        Object::Triangle => {
            let (a, h) = (TRIANGLE_SIDE * s / 2.0, triangle_height(s) / 2.0);
            vec![[0.0, -h], [a, h], [-a, h]]
        }
        Object::Cross => {
            let (l, t) = (s / 2.0, CROSS_THICKNESS * s / 2.0);
            vec![
                [-t, -l],
                [t, -l],
                [t, -t],
                [l, -t],
                [l, t],
                [t, t],
                [t, l],
                [-t, l],
                [-t, t],
                [-l, t],
                [-l, -t],
                [-t, -t],
            ]
        }
    }
}

/// Whether the point (x, y) of the figure's frame lies inside the shape of size `s`.
fn inside(object: Object, s: f32, x: f32, y: f32) -> bool {
    match object {
        Object::Circle => x * x + y * y <= s * s / 4.0,
        Object::Square => {
            let h = SQUARE_SIDE * s / 2.0;
            x.abs() <= h && y.abs() <= h
        }
        Object::Triangle => {
            let (a, h) = (TRIANGLE_SIDE * s / 2.0, triangle_height(s));
            let t = (y + h / 2.0) / h; // 0 at the apex, 1 at the base
            (0.0..=1.0).contains(&t) && x.abs() <= t * a
        }
        Object::Cross => {
            let (l, t) = (s / 2.0, CROSS_THICKNESS * s / 2.0);
            (x.abs() <= l && y.abs() <= t) || (x.abs() <= t && y.abs() <= l)
        }
    }
}

/// Whether (x, y) of the figure's frame is part of the character's face.
fn on_face(character: Character, s: f32, x: f32, y: f32) -> bool {
    let disc = |cx: f32, cy: f32, r: f32| (x - cx).powi(2) + (y - cy).powi(2) <= r * r;
    match character {
        Character::Bob => {
            let eyes = disc(-0.17 * s, -0.11 * s, 0.07 * s) || disc(0.17 * s, -0.11 * s, 0.07 * s);
            // The smile: the lower part of a ring around (0, 0.0 s).
            let (mx, my) = (x, y);
            let d = (mx * mx + my * my).sqrt();
            let smile = (d - 0.25 * s).abs() <= 0.045 * s && my >= 0.5 * d;
            eyes || smile
        }
        Character::Kiki => disc(0.0, 0.1 * s, 0.11 * s),
    }
}

/// Stripe period in pixels for a figure of size `s`.
pub fn stripe_period(s: f32) -> f32 {
    (0.26 * s).clamp(8.0, 12.0)
}

/// The colour at (x, y) of the figure's frame, `None` outside the figure.
fn figure_colour(scene: &Scene, x: f32, y: f32) -> Option<[u8; 3]> {
    if !inside(scene.object, scene.size, x, y) {
        return None;
    }
    if let Some(c) = scene.character {
        if on_face(c, scene.size, x, y) {
            return Some(FACE);
        }
    }
    Some(fill(scene.colour, scene.striped, scene.size, x, y))
}

fn fill(colour: Colour, striped: bool, s: f32, x: f32, y: f32) -> [u8; 3] {
    if striped {
        let u = (x + y) * std::f32::consts::FRAC_1_SQRT_2 / stripe_period(s);
        if u.rem_euclid(1.0) >= 0.5 {
            return colour.light_rgb();
        }
    }
    colour.rgb()
}

/// Draws `scene`: the 64×64 image and the figure's mask (0/255).
pub fn render(scene: &Scene) -> (RgbImage, GrayImage) {
    let n = IMAGE_SIZE;
    let bg = scene.background.rgb();
    let mut image = RgbImage::from_pixel(n, n, Rgb(bg));
    let mut mask = GrayImage::new(n, n);
    let (sin, cos) = scene.rotation.to_radians().sin_cos();
    let [cx, cy] = scene.centre;
    let [ex, ey] = scene.half_extent();
    let reach = 1.0; // a pixel's samples lie within its centre ± 0.5
    let samples = (SS * SS) as u32;
    for py in 0..n {
        let yc = py as f32 + 0.5;
        if (yc - cy).abs() > ey + reach {
            continue;
        }
        for px in 0..n {
            let xc = px as f32 + 0.5;
            if (xc - cx).abs() > ex + reach {
                continue;
            }
            let mut acc = [0u32; 3];
            let mut covered = 0u32;
            for sy in 0..SS {
                let y = py as f32 + (sy as f32 + 0.5) / SS as f32 - cy;
                for sx in 0..SS {
                    let x = px as f32 + (sx as f32 + 0.5) / SS as f32 - cx;
                    // Screen → figure frame: rotate by -rotation.
                    let (fx, fy) = (cos * x + sin * y, -sin * x + cos * y);
                    let c = match figure_colour(scene, fx, fy) {
                        Some(c) => {
                            covered += 1;
                            c
                        }
                        None => bg,
                    };
                    for k in 0..3 {
                        acc[k] += c[k] as u32;
                    }
                }
            }
            if covered > 0 {
                let c = acc.map(|a| ((a + samples / 2) / samples) as u8);
                image.put_pixel(px, py, Rgb(c));
            }
            if 2 * covered >= samples {
                mask.put_pixel(px, py, Luma([255]));
            }
        }
    }
    (image, mask)
}
