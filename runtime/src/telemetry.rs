//! Structured logs through tracing: human-readable or JSON, filtered by `GOGRID_LOG`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
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

/// The logging flags both binaries take.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info,gogrid_operator=debug`.
    #[arg(long, env = "GOGRID_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "GOGRID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Install the global subscriber these flags describe.
    pub fn init(&self) {
        init(&self.log, self.log_format);
    }
}

/// The exit code of a binary's `main`, logging the error that stopped it.
pub fn exit_code(result: anyhow::Result<()>, binary: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{binary} stopped");
            ExitCode::FAILURE
        }
    }
}

/// Install the global subscriber. `filter` is an `EnvFilter` directive such as
/// `info,gogrid_operator=debug`.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
