//! What every fmn stage shares: atomic output, YAML config loading, progress bars, logging, shards.
pub mod allocator;
pub mod atomic;
pub mod config;
pub mod logging;
pub mod progress;
pub mod shard;

pub use atomic::{write_atomic, write_json_atomic, StagingDir};
pub use config::{load_yaml, ConfigError};
pub use shard::Shard;

/// The fmn version written into every output's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
