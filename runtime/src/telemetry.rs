//! Structured logs through tracing: human-readable or JSON, filtered by `GOGRID_LOG`.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

/// Log line format.
#[derive(Clone, Copy, Debug, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. `filter` is an `EnvFilter` directive such as
/// `info,gogrid_operator=debug`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
