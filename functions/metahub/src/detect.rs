//! `metahub detect`: the machine type that fits this host.

use clap::Args;

#[derive(Args)]
pub struct DetectArgs {}

pub async fn run(_args: DetectArgs) -> anyhow::Result<()> {
    anyhow::bail!("detect is not implemented yet")
}
