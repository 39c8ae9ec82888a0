//! `metahub index create|inspect`: the CI side, publishing per-microarchitecture images as one index with features.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum IndexCommand {}

pub async fn run(command: IndexCommand) -> anyhow::Result<()> {
    match command {}
}
