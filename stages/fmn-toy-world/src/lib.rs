//! `fmn-toy-world`: the toy world that stands in for real Stable Diffusion data.
//!
//! A synthetic 64×64 image domain with named concepts — objects (`circle`, `square`,
//! `triangle`, `cross`), colours (`red`, `green`, `blue`, `yellow`), a style (`stripes`) and two
//! characters (`bob`, `kiki`) — with a renderer ([`render()`]), captions ([`caption()`]),
//! degradations ([`augment`]), rendered sets on disk ([`dataset`], read back by
//! [`render_folder`]) and a judge (`judge::Judge`, feature `judge`, on by default) that says
//! what an image shows.
//!
//! It knows nothing of diffusion models: the toy model's trainer is `fmn-toy`.
//!
//! ```
//! use fmn_toy_world::{caption, render, scene_rng, Scene, SceneSpec};
//! let mut rng = scene_rng(7, 0);
//! let scene = Scene::random(&mut rng, &SceneSpec::default());
//! let (image, mask) = render(&scene);
//! let text = caption(&scene, &mut rng);
//! assert_eq!(image.dimensions(), (64, 64));
//! assert_eq!(mask.dimensions(), (64, 64));
//! assert!(!text.is_empty());
//! ```
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod augment;
pub mod caption;
pub mod dataset;
#[cfg(feature = "judge")]
pub mod judge;
pub mod render;
pub mod render_folder;
pub mod scene;

pub use caption::{caption, caption_with, subject, STYLE_SUFFIX, TEMPLATES};
#[cfg(feature = "judge")]
pub use judge::{Guess, Judge, Verdict};
pub use render::render;
pub use scene::{
    vocabulary, Background, Character, Colour, Concept, Object, Scene, SceneSpec, IMAGE_SIZE,
    STYLE_WORD,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The fmn version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The generator for image `index` of a set drawn with `seed`: ChaCha8 seeded with `seed`, on
/// stream `index`. Image `i` of a set does not depend on how many images the set has.
pub fn scene_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}
