//! `--store`: `file:PATH` or `dynamodb:TABLE`.

use anyhow::{Context, bail};
use metahub_core::ports::Store;
use metahub_store_dynamodb::DynamoStore;
use metahub_store_file::FileStore;
use std::path::PathBuf;
use std::sync::Arc;

/// `file:` under the user's data directory, so a bare `metahub serve` keeps its state across restarts.
pub fn default_spec() -> String {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    format!("file:{}", base.join("metahub/store.redb").display())
}

enum StoreSpec {
    File(PathBuf),
    Dynamo(String),
}

fn parse(spec: &str) -> anyhow::Result<StoreSpec> {
    match spec.split_once(':') {
        Some(("file", path)) if !path.is_empty() => Ok(StoreSpec::File(PathBuf::from(path))),
        Some(("dynamodb", table)) if !table.is_empty() => Ok(StoreSpec::Dynamo(table.to_owned())),
        _ => bail!("--store {spec:?} is neither file:PATH nor dynamodb:TABLE"),
    }
}

pub async fn open(spec: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match parse(spec)? {
        StoreSpec::File(path) => Arc::new(FileStore::open(&path).with_context(|| format!("opening store {spec}"))?),
        StoreSpec::Dynamo(table) => Arc::new(DynamoStore::from_env(table).await),
    })
}

pub async fn init(spec: &str) -> anyhow::Result<()> {
    match parse(spec)? {
        StoreSpec::File(path) => {
            FileStore::open(&path).with_context(|| format!("opening store {spec}"))?;
        }
        StoreSpec::Dynamo(table) => {
            DynamoStore::from_env(table).await.create_table().await.with_context(|| format!("creating {spec}"))?;
        }
    }
    println!("store {spec} is ready");
    Ok(())
}
