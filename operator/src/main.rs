//! `gogrid-operator`: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use gogrid_operator::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.logging.init();
    gogrid_runtime::telemetry::exit_code(run(cli).await, "gogrid-operator")
}
