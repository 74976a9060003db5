//! GoGrid's side of `make bench` (hack/bench.sh runs it next to the peers in
//! bench/peers/ and assembles the report). Every subcommand prints one JSON
//! object on stdout; progress goes to stderr.
//!
//! - `llm`: SmolLM2 prefill and decode tokens/s on the prompt ids the llama.cpp
//!   peer used (greedy, a fixed number of tokens, like the peer);
//! - `minilm`: all-MiniLM-L6-v2 latency at batch 1 (8 and 128 tokens) and
//!   throughput at batch 32, on bench/peers/minilm_inputs.json;
//! - `overhead`: the serving layer's added latency (REST and gRPC, one client,
//!   loopback) against the same forward called directly;
//! - `serve`: a GoGrid server with the identity model or MiniLM, for `load`;
//! - `load`: a closed-loop load generator (HTTP/1.1 keep-alive or gRPC):
//!   requests/s and latency percentiles;
//! - `membw`: the single-thread memory read bandwidth, the decode ceiling;
//! - `tiny-llama`: writes a tiny random llama GGUF (the one the pipeline tests
//!   use) for benchmarks that need many agents to load a model at once.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod engine;
mod load;
mod serve;
mod stats;
#[path = "../../node-agent/pipeline/tests/common/tiny.rs"]
#[allow(dead_code, clippy::expect_used)]
mod tiny;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gogrid-bench",
    about = "GoGrid benchmark measurements (JSON on stdout)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// SmolLM2 prefill/decode tokens/s at batch 1.
    Llm(engine::LlmArgs),
    /// all-MiniLM-L6-v2 latency and batch-32 throughput.
    Minilm(engine::MinilmArgs),
    /// Latency the REST and gRPC servers add to a direct forward.
    Overhead(serve::OverheadArgs),
    /// Serve the identity model or MiniLM until killed.
    Serve(serve::ServeArgs),
    /// Closed-loop load against a server.
    Load(load::LoadArgs),
    /// Single-thread memory read bandwidth.
    Membw(engine::MembwArgs),
    /// Write a tiny random llama GGUF.
    TinyLlama {
        /// Where to write it.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let value = match cli.command {
        Command::Llm(a) => engine::llm(&a)?,
        Command::Minilm(a) => engine::minilm(&a)?,
        Command::Membw(a) => engine::membw(&a),
        Command::Overhead(a) => serve::overhead(&a)?,
        Command::Serve(a) => {
            serve::serve(&a)?;
            return Ok(());
        }
        Command::Load(a) => load::run(&a)?,
        Command::TinyLlama { out } => {
            tiny::TinyLlama::default().write(&out);
            serde_json::json!({"path": out.display().to_string()})
        }
    };
    println!("{}", serde_json::to_string(&value)?);
    Ok(())
}
