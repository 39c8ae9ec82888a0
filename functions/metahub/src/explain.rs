//! `metahub explain TYPE IMAGE`: every entry of IMAGE's index, whether it fits TYPE and why, and the one served.

use clap::Args;

#[derive(Args)]
pub struct ExplainArgs {}

pub async fn run(_args: ExplainArgs) -> anyhow::Result<()> {
    anyhow::bail!("explain is not implemented yet")
}
