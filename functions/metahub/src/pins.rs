//! `metahub pins IMAGE`: the digest every machine type is served for an image, for deployments that pin digests
//! per node pool (a Helm value, a Kustomize patch per pool). Each row is what `serve` answers that type by tag, and
//! the build its clients then take: a durable pin, because it is the upstream's own manifest.

use crate::explain::{ImageArgs, fetch, short};
use clap::Args;
use metahub_core::filter;
use serde_json::json;

#[derive(Args)]
pub struct PinsArgs {
    #[command(flatten)]
    source: ImageArgs,
}

pub async fn run(PinsArgs { source: args }: PinsArgs) -> anyhow::Result<()> {
    let image = args.image()?;
    // The embedded store is single-process: read the types, then close it before the upstream fetch.
    let machine_types = crate::store::open(&args.store.store).await?.list_machine_types().await?;
    let (manifest, requirements) = fetch(&image, &args.upstreams).await?;
    let index = filter::is_index_media_type(&manifest.media_type);
    let rows: Vec<serde_json::Value> = machine_types
        .iter()
        .map(|machine| {
            let served = match index {
                true => filter::filter_index_gpu(&manifest, machine, &requirements),
                false => Ok(manifest.clone()),
            };
            let (digest, builds, error) = match served {
                Ok(served) if index => {
                    let builds = filter::client_choices(&served.bytes, machine).unwrap_or_default();
                    let builds: Vec<_> = builds
                        .iter()
                        .map(|b| json!({"digest": b.digest, "platform": b.platform.to_string()}))
                        .collect();
                    (Some(served.digest.to_string()), builds, None)
                }
                Ok(served) => (Some(served.digest.to_string()), Vec::new(), None),
                Err(e) => (None, Vec::new(), Some(format!("{}: {}", e.code.as_str(), e.message))),
            };
            json!({"machineType": machine.name(), "match": machine.match_mode().to_string(), "digest": digest,
                   "builds": builds, "error": error})
        })
        .collect();
    if args.json {
        println!("{}", json!({"image": image.to_string(), "digest": manifest.digest.to_string(), "pins": rows}));
        return Ok(());
    }
    println!("{image} {} ({})", short(manifest.digest.as_str()), manifest.media_type);
    let header = ["MACHINE TYPE", "BY TAG", "BUILD (pin this)", "PLATFORM"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            let builds = row["builds"].as_array().cloned().unwrap_or_default();
            let joined = |key: &str| match builds.is_empty() {
                true => "-".to_owned(),
                false => builds.iter().map(|b| text(&b[key])).collect::<Vec<_>>().join(" "),
            };
            let by_tag = match &row["error"] {
                serde_json::Value::String(e) => e.clone(),
                _ => text(&row["digest"]),
            };
            [text(&row["machineType"]), by_tag, joined("digest"), joined("platform")]
        })
        .collect();
    let widths: Vec<usize> =
        (0..4).map(|i| cells.iter().map(|c| c[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let line = |c: [&str; 4]| {
        let padded: Vec<String> = c.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3]]);
    }
    Ok(())
}
