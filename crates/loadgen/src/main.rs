//! The `loadgen` binary: see the crate docs and README.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadgen::cli::run(loadgen::cli::Cli::parse()).await
}
