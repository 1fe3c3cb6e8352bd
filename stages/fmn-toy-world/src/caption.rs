//! Captions: a template around the scene's subject ("a red circle", "bob"), with
//! " in the style of stripes" appended for striped figures.
use crate::scene::{Scene, STYLE_WORD};
use rand::Rng;

/// Caption templates; `{}` stands for the subject ("a red circle" or "bob").
pub const TEMPLATES: &[&str] = &[
    "a photo of {}",
    "{}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "a photo of {} on a plain background",
];

/// Appended to captions of striped figures.
pub const STYLE_SUFFIX: &str = " in the style of stripes";

/// The scene's subject: the character's name, or "a {colour} {object}".
pub fn subject(scene: &Scene) -> String {
    match scene.character {
        Some(c) => c.word().to_string(),
        None => format!("a {} {}", scene.colour.word(), scene.object.word()),
    }
}

/// The caption of `scene` through `template` (which must contain `{}`).
pub fn caption_with(scene: &Scene, template: &str) -> String {
    let mut text = template.replacen("{}", &subject(scene), 1);
    if scene.striped {
        text.push_str(STYLE_SUFFIX);
    }
    debug_assert!(!scene.striped || text.contains(STYLE_WORD));
    text
}

/// A caption of `scene` through a template drawn uniformly from [`TEMPLATES`].
pub fn caption<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> String {
    caption_with(scene, TEMPLATES[rng.random_range(0..TEMPLATES.len())])
}
