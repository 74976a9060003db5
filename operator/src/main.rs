//! `gogrid-operator`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use gogrid_operator::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gogrid_runtime::telemetry::init(&cli.log, cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "operator stopped");
            ExitCode::FAILURE
        }
    }
}
