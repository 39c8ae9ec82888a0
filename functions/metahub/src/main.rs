//! `metahub`: wiring only. Commands live in their modules; errors end the process with one line naming what was wrong.

mod admin_client;
mod admin_ui;
mod cli;
mod detect;
mod explain;
mod index;
mod manage;
mod serve;
mod store;
mod upstreams;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "metahub=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metahub: {e:#}");
            ExitCode::FAILURE
        }
    }
}
