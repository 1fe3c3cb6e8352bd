//! What every fmn crate shares: atomic output, settings from config files and flags, shards,
//! image files, allocator and thread tuning, the source tree's data paths. (The command-line
//! conventions are `fmn-cli`'s.)
// The unit-test build also sees the dev-dependencies, which only the integration tests use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
pub mod allocator;
pub mod atomic;
pub mod config;
pub mod images;
pub mod lock;
pub mod memory;
pub mod shard;
pub mod threads;

pub use atomic::{write_atomic, write_json_atomic, StagingDir};
pub use config::{load_yaml, merge, merge_valid, merge_valid_layers, ConfigError, Validate};
pub use lock::{LockError, OutputLock};
pub use shard::Shard;

/// Sets the process up for tensor work before anything is loaded: the allocator
/// ([`allocator::tune_for_tensors`]) and the threads ([`threads::tune_for_tensors`]).
pub fn tune_for_tensors() {
    allocator::tune_for_tensors();
    threads::tune_for_tensors();
}

/// The fmn version written into every output's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shipped toy model (`data/toy-model` of the source tree), or `$FMN_TOY_MODEL`: what every
/// stage uses when no `--model` is given.
pub fn default_model_dir() -> std::path::PathBuf {
    match std::env::var_os("FMN_TOY_MODEL") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/toy-model"),
    }
}

/// The `data/` folder of the source tree (tokenizer, toy model, presets), or `$FMN_DATA_DIR`.
pub fn data_dir() -> std::path::PathBuf {
    match std::env::var_os("FMN_DATA_DIR") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    }
}
