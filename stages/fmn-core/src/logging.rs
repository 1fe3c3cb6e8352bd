//! Logs go to stderr through `tracing`; stdout is kept for `--json` summaries.

/// Installs the stderr subscriber. The level comes from `FMN_LOG` (e.g. `FMN_LOG=debug`),
/// else `info` with `verbose`, else `warn`.
pub fn init(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FMN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
