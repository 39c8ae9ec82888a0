//! `metahub`: wiring only. Commands live in their modules; errors end the process with one line naming what was wrong.

mod admin_client;
mod admin_ui;
mod cli;
mod credential_provider;
mod detect;
mod explain;
mod index;
mod manage;
mod metrics;
mod pins;
mod serve;
mod store;
mod upstreams;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metahub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: readable text, or one JSON object per line with `METAHUB_LOG_FORMAT=json` (what log shippers
/// read); the level from `RUST_LOG`, else info for MetaHub and its access lines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "metahub=info,warn".into());
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if std::env::var("METAHUB_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
}
