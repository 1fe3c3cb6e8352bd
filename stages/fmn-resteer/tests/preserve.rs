//! Automatic preservation: the list format, the shipped lists, the exact removal of entries
//! naming the concept, and the on-disk cache.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_ops::noise::NoiseRng;
use fmn_resteer::preserve::{
    gram_of, names_any, parse_list, preserved_gram, shipped_prompts, Encoder, Gram, GramCache,
};
use fmn_resteer::ResteerError;
use std::cell::Cell;

/// Contexts `[B, 3, 4]` drawn from each prompt's hash: a deterministic stand-in for a text
/// encoder, counting the prompts it encodes.
struct HashEncoder {
    salt: u64,
    encoded: Cell<usize>,
}

impl Encoder for HashEncoder {
    fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor, ResteerError> {
        self.encoded.set(self.encoded.get() + prompts.len());
        let rows: Vec<Tensor> = prompts
            .iter()
            .map(|p| {
                let seed = p
                    .bytes()
                    .fold(self.salt, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                NoiseRng::new(seed).randn(&[1, 3, 4], &Device::Cpu).unwrap()
            })
            .collect();
        Ok(Tensor::cat(&rows, 0)?)
    }

    fn fingerprint(&self) -> Result<String, ResteerError> {
        Ok(format!("hash-encoder-{}", self.salt))
    }
}

fn encoder(salt: u64) -> HashEncoder {
    HashEncoder {
        salt,
        encoded: Cell::new(0),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn a_list_fills_each_template_with_each_entry() {
    let text = "# comment\n\nwhole prompt\n@template a photo of {}\n@template {} at night\na dog\n a cat \n";
    assert_eq!(
        parse_list(text).unwrap(),
        [
            "whole prompt",
            "a photo of a dog",
            "a dog at night",
            "a photo of a cat",
            "a cat at night"
        ]
    );
    let err = parse_list("@template no slot\nx\n").unwrap_err();
    assert!(err.contains("line 1") && err.contains("{}"), "{err}");
}

#[test]
fn the_shipped_lists_hold_a_few_thousand_distinct_prompts_and_no_toy_names() {
    let prompts = shipped_prompts().unwrap();
    // configs/preserve/README.md's table: 648 + 326 + 264 + 340 + 172.
    assert_eq!(prompts.len(), 1750);
    let distinct: std::collections::HashSet<&String> = prompts.iter().collect();
    assert_eq!(distinct.len(), prompts.len());
    for name in ["bob", "kiki", "stripes"] {
        assert!(
            !prompts.iter().any(|p| names_any(p, &[name.to_string()])),
            "{name} is in a shipped list"
        );
    }
}

#[test]
fn names_are_matched_as_whole_words() {
    let names = ["Van Gogh".to_string(), "cat".to_string()];
    assert!(names_any("a painting in the style of van gogh", &names));
    assert!(names_any("a photo of a cat", &names));
    assert!(!names_any("a photo of a catapult", &names));
    assert!(!names_any("a photo of a van", &names));
}

#[test]
fn entries_naming_the_concept_are_taken_out_exactly_and_the_cache_serves_every_concept() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = GramCache::new(tmp.path());
    let prompts: Vec<String> = [
        "a photo of a dog",
        "a cat",
        "a dog at night",
        "a red car",
        "a tree",
    ]
    .map(String::from)
    .to_vec();
    let enc = encoder(7);
    let dog = ["dog".to_string()];
    let (got, summary) = preserved_gram(&enc, &prompts, &dog, Some(&cache), &Device::Cpu).unwrap();
    let got = got.unwrap();
    assert_eq!(
        (summary.prompts, summary.taken_out, summary.cache_hit),
        (5, 2, false)
    );
    let direct = gram_of(&enc, &["a cat", "a red car", "a tree"])
        .unwrap()
        .unwrap();
    assert_eq!(got.rows, direct.rows);
    assert_eq!(got.rows, 9);
    assert!(
        max_diff(&got.sum, &direct.sum) < 1e-9,
        "{}",
        max_diff(&got.sum, &direct.sum)
    );

    // The second concept reads the cache: only its own entries are encoded.
    let enc = encoder(7);
    let car = ["car".to_string()];
    let (got, summary) = preserved_gram(&enc, &prompts, &car, Some(&cache), &Device::Cpu).unwrap();
    assert!(summary.cache_hit);
    assert_eq!(enc.encoded.get(), 1, "only the car entry is encoded");
    let direct = gram_of(
        &enc,
        &["a photo of a dog", "a cat", "a dog at night", "a tree"],
    )
    .unwrap()
    .unwrap();
    assert!(max_diff(&got.unwrap().sum, &direct.sum) < 1e-9);

    // Another encoder never uses this cache.
    let other = encoder(8);
    let (got, summary) =
        preserved_gram(&other, &prompts, &car, Some(&cache), &Device::Cpu).unwrap();
    assert!(!summary.cache_hit);
    let direct = gram_of(
        &other,
        &["a photo of a dog", "a cat", "a dog at night", "a tree"],
    )
    .unwrap()
    .unwrap();
    assert!(max_diff(&got.unwrap().sum, &direct.sum) < 1e-9);

    // A damaged cache file is rebuilt, not read.
    let path = summary.cache.unwrap();
    std::fs::write(&path, b"not a cache").unwrap();
    let (got, summary) =
        preserved_gram(&other, &prompts, &car, Some(&cache), &Device::Cpu).unwrap();
    assert!(!summary.cache_hit);
    assert!(max_diff(&got.unwrap().sum, &direct.sum) < 1e-9);
    let (_, summary) = preserved_gram(&other, &prompts, &car, Some(&cache), &Device::Cpu).unwrap();
    assert!(summary.cache_hit, "the rebuilt cache was not written back");
    // Nothing but the two cache files is left in the cache folder (no temp files).
    assert_eq!(
        std::fs::read_dir(tmp.path().join("preserve"))
            .unwrap()
            .count(),
        2
    );

    // A list that names only the concept preserves nothing.
    let only_dog = ["a dog".to_string(), "dogs and a dog".to_string()];
    let (got, _) = preserved_gram(&enc, &only_dog, &dog, Some(&cache), &Device::Cpu).unwrap();
    assert!(got.is_none());
}

#[test]
fn the_gram_mean_is_the_rows_second_moment() {
    let c = Tensor::new(&[[1f32, 0.0], [1.0, 2.0]], &Device::Cpu).unwrap();
    let g = Gram::of(&c).unwrap();
    assert_eq!(g.rows, 2);
    // CᵀC = [[2, 2], [2, 4]], over 2 rows.
    let mean = g.mean().unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(mean, [[1.0, 1.0], [1.0, 2.0]]);
}
