//! The toy world's vocabulary and scene descriptions.
//!
//! A scene is one figure on a plain light background: an [`Object`] in a [`Colour`], either
//! solid or filled with diagonal stripes (the style `stripes`), or one of two
//! [`Character`]s (`bob`, a yellow circle with a smiling face; `kiki`, a blue triangle with
//! one eye), at a random size, position and small rotation.
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Width and height of every toy image, in pixels.
pub const IMAGE_SIZE: u32 = 64;

/// The style word: figures filled with diagonal stripes ("... in the style of stripes").
pub const STYLE_WORD: &str = "stripes";

/// An unknown word given where a vocabulary word was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{word}` (expected one of: {expected})")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub word: String,
    pub expected: String,
}

macro_rules! vocabulary_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in class-index order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The vocabulary word.
            pub fn word(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// Position in [`Self::ALL`] (the judge's class index).
            pub fn index(self) -> usize {
                // ALL lists the variants in declaration order, which their discriminants follow.
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                let t = s.trim().to_ascii_lowercase();
                Self::ALL.iter().copied().find(|v| v.word() == t).ok_or_else(|| UnknownWord {
                    kind: $kind,
                    word: s.to_string(),
                    expected: Self::ALL.iter().map(|v| v.word()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

vocabulary_enum!(
    /// The figure's shape.
    Object, "object", {
    Circle => "circle",
    Square => "square",
    Triangle => "triangle",
    Cross => "cross",
});

vocabulary_enum!(
    /// The figure's colour.
    Colour, "colour", {
    Red => "red",
    Green => "green",
    Blue => "blue",
    Yellow => "yellow",
});

vocabulary_enum!(
    /// A named character (stands in for an identity).
    Character, "character", {
    Bob => "bob",
    Kiki => "kiki",
});

vocabulary_enum!(
    /// The plain background tint.
    Background, "background", {
    White => "white",
    Cream => "cream",
    Grey => "grey",
    Mist => "mist",
});

impl Colour {
    /// The solid fill.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [214, 40, 40],
            Colour::Green => [36, 158, 64],
            Colour::Blue => [38, 82, 214],
            Colour::Yellow => [236, 194, 24],
        }
    }

    /// The lighter variant that alternates with [`Self::rgb`] in stripes (half-way to white).
    pub fn light_rgb(self) -> [u8; 3] {
        self.rgb().map(|c| ((c as u16 + 255) / 2) as u8)
    }
}

impl Character {
    /// bob is a circle, kiki a triangle.
    pub fn object(self) -> Object {
        match self {
            Character::Bob => Object::Circle,
            Character::Kiki => Object::Triangle,
        }
    }

    /// bob is yellow, kiki blue.
    pub fn colour(self) -> Colour {
        match self {
            Character::Bob => Colour::Yellow,
            Character::Kiki => Colour::Blue,
        }
    }
}

impl Background {
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [246, 246, 244],
            Background::Cream => [244, 238, 222],
            Background::Grey => [226, 226, 226],
            Background::Mist => [228, 236, 244],
        }
    }
}

/// One nameable concept of the toy world: what `--only` selects and what a model can be made
/// to forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Concept {
    Object(Object),
    Colour(Colour),
    /// The style `stripes`.
    Stripes,
    Character(Character),
}

impl Concept {
    /// Every concept: objects, colours, the style, characters.
    pub fn all() -> Vec<Concept> {
        let mut all: Vec<Concept> = Object::ALL.iter().map(|&o| Concept::Object(o)).collect();
        all.extend(Colour::ALL.iter().map(|&c| Concept::Colour(c)));
        all.push(Concept::Stripes);
        all.extend(Character::ALL.iter().map(|&c| Concept::Character(c)));
        all
    }

    pub fn word(self) -> &'static str {
        match self {
            Concept::Object(o) => o.word(),
            Concept::Colour(c) => c.word(),
            Concept::Stripes => STYLE_WORD,
            Concept::Character(c) => c.word(),
        }
    }
}

impl fmt::Display for Concept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for Concept {
    type Err = UnknownWord;
    fn from_str(s: &str) -> Result<Self, UnknownWord> {
        let t = s.trim().to_ascii_lowercase();
        Concept::all()
            .into_iter()
            .find(|c| c.word() == t)
            .ok_or_else(|| UnknownWord {
                kind: "concept",
                word: s.to_string(),
                expected: vocabulary().join(", "),
            })
    }
}

impl Serialize for Concept {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.word())
    }
}

impl<'de> Deserialize<'de> for Concept {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Every concept word of the toy world (objects, colours, `stripes`, characters).
pub fn vocabulary() -> Vec<&'static str> {
    Concept::all().into_iter().map(Concept::word).collect()
}

/// One toy image, fully described. [`crate::render()`] draws it; it serialises to the
/// manifest's per-image fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// The shape (for a character, the character's shape).
    pub object: Object,
    /// The colour (for a character, the character's colour).
    pub colour: Colour,
    /// Filled with diagonal stripes (the style `stripes`) instead of a solid fill.
    pub striped: bool,
    /// `bob` or `kiki`, or none for a plain figure.
    pub character: Option<Character>,
    /// The figure's nominal width in pixels before rotation (a circle's diameter, a square's
    /// bounding width; see the renderer for each shape's proportions).
    pub size: f32,
    /// Centre of the figure's bounding box, in pixels from the top-left corner (x, y).
    pub centre: [f32; 2],
    /// Rotation in degrees, clockwise on screen.
    pub rotation: f32,
    pub background: Background,
}

/// How [`Scene::random`] draws scenes: attributes can be forced, the rest are drawn with the
/// given shares. The default is the training distribution.
///
/// Forcing an object, a colour or `striped = Some(true)` draws plain figures (no characters)
/// unless `character` is also forced. A forced character decides the object and colour
/// (bob: yellow circle, kiki: blue triangle), overriding any forced object or colour.
/// Characters are solid unless `striped = Some(true)` is forced too (a striped character lies
/// outside the training distribution and the judge's competence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSpec {
    pub object: Option<Object>,
    pub colour: Option<Colour>,
    pub striped: Option<bool>,
    pub character: Option<Character>,
    /// Share of characters (split evenly between bob and kiki) when nothing is forced.
    pub character_share: f32,
    /// Share of striped figures among the plain (non-character) figures, when not forced.
    pub stripes_share: f32,
    /// Range of [`Scene::size`] for plain figures, in pixels.
    pub size: (f32, f32),
    /// Range of [`Scene::size`] for characters (larger, so that faces stay visible).
    pub character_size: (f32, f32),
    /// Rotations are drawn uniformly in ±`max_rotation` degrees.
    pub max_rotation: f32,
}

impl Default for SceneSpec {
    fn default() -> Self {
        Self {
            object: None,
            colour: None,
            striped: None,
            character: None,
            character_share: 0.22,
            stripes_share: 0.25,
            size: (26.0, 48.0),
            character_size: (34.0, 48.0),
            max_rotation: 15.0,
        }
    }
}

impl SceneSpec {
    /// Scenes that all show `concept` (e.g. `--only bob`, `--only stripes`, `--only red`).
    pub fn only(concept: Concept) -> Self {
        let mut spec = Self::default();
        match concept {
            Concept::Object(o) => spec.object = Some(o),
            Concept::Colour(c) => spec.colour = Some(c),
            Concept::Stripes => spec.striped = Some(true),
            Concept::Character(c) => spec.character = Some(c),
        }
        spec
    }
}

/// Margin kept between the figure's rotated bounding box and the image border, in pixels.
const MARGIN: f32 = 2.0;

impl Scene {
    /// Draws a scene from `spec`. Deterministic for a given rng state.
    pub fn random<R: Rng + ?Sized>(rng: &mut R, spec: &SceneSpec) -> Scene {
        let anything_forced =
            spec.object.is_some() || spec.colour.is_some() || spec.striped == Some(true);
        let character = match spec.character {
            Some(c) => Some(c),
            None if !anything_forced && rng.random::<f32>() < spec.character_share => {
                Some(Character::ALL[rng.random_range(0..Character::ALL.len())])
            }
            None => None,
        };
        let object = match (character, spec.object) {
            (Some(c), _) => c.object(),
            (None, Some(o)) => o,
            (None, None) => Object::ALL[rng.random_range(0..Object::ALL.len())],
        };
        let colour = match (character, spec.colour) {
            (Some(c), _) => c.colour(),
            (None, Some(c)) => c,
            (None, None) => Colour::ALL[rng.random_range(0..Colour::ALL.len())],
        };
        let striped = match spec.striped {
            Some(s) => s,
            None => character.is_none() && rng.random::<f32>() < spec.stripes_share,
        };
        let (lo, hi) = if character.is_some() {
            spec.character_size
        } else {
            spec.size
        };
        let size = if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        };
        let rotation = if spec.max_rotation > 0.0 {
            rng.random_range(-spec.max_rotation..spec.max_rotation)
        } else {
            0.0
        };
        let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
        let mut scene = Scene {
            object,
            colour,
            striped,
            character,
            size,
            centre: [0.0, 0.0],
            rotation,
            background,
        };
        let [ex, ey] = scene.half_extent();
        let side = IMAGE_SIZE as f32;
        let mut coord = |e: f32| {
            let (lo, hi) = (e + MARGIN, side - e - MARGIN);
            if hi > lo {
                rng.random_range(lo..hi)
            } else {
                side / 2.0
            }
        };
        scene.centre = [coord(ex), coord(ey)];
        scene
    }

    /// Half-width and half-height of the rotated figure's bounding box, in pixels.
    pub fn half_extent(&self) -> [f32; 2] {
        let (s, c) = self.rotation.to_radians().sin_cos();
        match self.object {
            Object::Circle => [self.size / 2.0; 2],
            _ => {
                let mut e = [0.0f32; 2];
                for [x, y] in crate::render::outline(self.object, self.size) {
                    e[0] = e[0].max((c * x - s * y).abs());
                    e[1] = e[1].max((s * x + c * y).abs());
                }
                e
            }
        }
    }

    /// The concepts this scene shows: its object, colour, `stripes` if striped, its character.
    pub fn concepts(&self) -> Vec<Concept> {
        let mut v = vec![Concept::Object(self.object), Concept::Colour(self.colour)];
        if self.striped {
            v.push(Concept::Stripes);
        }
        if let Some(c) = self.character {
            v.push(Concept::Character(c));
        }
        v
    }

    /// Whether the scene shows `concept`.
    pub fn shows(&self, concept: Concept) -> bool {
        self.concepts().contains(&concept)
    }
}
