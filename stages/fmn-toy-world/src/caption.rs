//! Captions: a template around the scene's subject ("a red circle", "bob"), with
//! " in the style of stripes" appended for striped figures.
use crate::scene::{Character, Colour, Object, Scene, STYLE_WORD};
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

/// The templates of a toy model's `preserve.txt`: two of [`TEMPLATES`], so that the others stay
/// phrasings no preservation list holds.
pub const PRESERVE_TEMPLATES: &[&str] = &["a photo of {}", "{}"];

/// The `preserve.txt` a toy model ships (`configs/preserve/README.md` format): every subject
/// its captions name, plain and striped, under [`PRESERVE_TEMPLATES`].
pub fn preserve_list() -> String {
    let mut subjects: Vec<String> = Vec::new();
    for colour in Colour::ALL {
        for object in Object::ALL {
            subjects.push(format!("a {} {}", colour.word(), object.word()));
        }
    }
    subjects.extend(Character::ALL.iter().map(|c| c.word().to_string()));
    let mut text = String::from(
        "# The subjects this toy model's captions name (written by `fmn-toy train`): what\n\
         # fmn-resteer preserves by default (instead of its built-in lists).\n",
    );
    for t in PRESERVE_TEMPLATES {
        text.push_str(&format!("@template {t}\n"));
    }
    for s in &subjects {
        text.push_str(s);
        text.push('\n');
        text.push_str(s);
        text.push_str(STYLE_SUFFIX);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_toy_model_ships_the_preserve_list_its_trainer_writes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/toy-model/preserve.txt");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(committed, super::preserve_list(), "{}", path.display());
        // 18 subjects, plain and striped, under 2 templates; no held-out template among them.
        let entries = committed
            .lines()
            .filter(|l| !l.starts_with(['#', '@']))
            .count();
        assert_eq!(entries, 36);
        assert!(!committed.contains("a drawing of") && !committed.contains("an image of"));
    }
}
