//! `fmn-attack`: does a forgotten concept come back? Textual inversion on the patched model
//! from the concept's images (Pham et al., "Circumventing Concept Erasure Methods for
//! Text-to-Image Generative Models", ICLR 2024), the learned tokens sampled and judged: the
//! attack success rate (ASR) is the share of attack images the judge calls the concept. A
//! gradient-free prompt search over vocabulary words is the second method (`search`).
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod attack;
pub mod cli;
pub mod config;
pub mod report;
pub mod search;
