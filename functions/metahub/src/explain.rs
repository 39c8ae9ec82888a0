//! `metahub explain TYPE IMAGE`: every entry of IMAGE's index, whether it fits TYPE and why, and the one served.
//!
//! The verdicts are `metahub_core::filter::explain`'s, the same function `serve` filters with, so what this prints is
//! what a machine of TYPE is served.

use crate::cli::StoreArg;
use crate::upstreams::UpstreamArgs;
use anyhow::{Context, bail};
use clap::Args;
use metahub_core::filter::{self, ACCEPT_ALL, Index, Verdict};
use metahub_core::ports::{Manifest, Upstream};
use metahub_core::reference::ImageRef;
use metahub_upstream::ClientOptions;
use serde_json::json;

#[derive(Args)]
pub struct ExplainArgs {
    /// The machine type, as stored.
    machine_type: String,
    /// `org/image:tag`, `org/image@sha256:…` or `org/image` (tag latest) on the upstream.
    image: String,
    /// The upstreams the image is read from, as `serve` routes names to them.
    #[command(flatten)]
    upstreams: UpstreamArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArg,
}

pub async fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let image: ImageRef = args.image.parse().with_context(|| format!("image {:?}", args.image))?;
    let machine = {
        let store = crate::store::open(&args.store.store).await?;
        let Some(machine) = store.machine_type(&args.machine_type.parse()?).await? else {
            bail!("no machine type {:?} in store {}", args.machine_type, args.store.store);
        };
        machine
        // The store closes here: the embedded store is single-process, so it is not held during the upstream fetch.
    };

    let manifest = fetch(&image, &args.upstreams).await?;

    if !filter::is_index_media_type(&manifest.media_type) {
        let why = "a single manifest, not an index: it passes through verbatim to every machine type";
        if args.json {
            let out = json!({
                "image": image.to_string(),
                "digest": manifest.digest.to_string(),
                "mediaType": manifest.media_type,
                "index": false,
                "machineType": machine.to_json(),
                "passthrough": true,
                "reason": why,
            });
            println!("{out}");
        } else {
            println!("{image} {} ({}) is {why}", short(manifest.digest.as_str()), manifest.media_type);
        }
        return Ok(());
    }

    let index = Index::parse(&manifest.bytes)?;
    let verdicts = filter::explain(&index, &machine);
    // The filtered index as `serve` answers it, or the 404 it answers when nothing fits.
    let filtered = filter::filter_index(&manifest, &machine);

    if args.json {
        let entries: Vec<_> = verdicts.iter().map(Verdict::to_json).collect();
        let served: Vec<&str> = verdicts.iter().filter(|v| v.served).map(|v| v.entry.digest.as_str()).collect();
        let (filtered_digest, error) = match &filtered {
            Ok(f) => (Some(f.digest.to_string()), None),
            Err(e) => (None, Some(json!({"code": e.code.as_str(), "message": e.message}))),
        };
        let out = json!({
            "image": image.to_string(),
            "digest": manifest.digest.to_string(),
            "mediaType": manifest.media_type,
            "index": true,
            "machineType": machine.to_json(),
            "entries": entries,
            "served": served,
            "filteredDigest": filtered_digest,
            "error": error,
        });
        println!("{out}");
        return Ok(());
    }

    println!("{image} {} ({})", short(manifest.digest.as_str()), manifest.media_type);
    println!("machine type {} [{}] ({})", machine.name(), machine.features().join(", "), machine.match_mode());
    println!();
    print_table(&verdicts);
    println!();
    match &filtered {
        Ok(f) => {
            let served = verdicts.iter().filter(|v| v.served).count();
            println!("served: {served} of {} entries, as index {}", verdicts.len(), f.digest);
        }
        Err(e) => println!("served: nothing; a pull answers {}: {}", e.code.as_str(), e.message),
    }
    Ok(())
}

/// The upstream's manifest of `image`, as `serve` routes its name.
pub(crate) async fn fetch(image: &ImageRef, upstreams: &UpstreamArgs) -> anyhow::Result<Manifest> {
    let upstream = upstreams.router(&ClientOptions::default())?;
    let accept: Vec<String> = ACCEPT_ALL.iter().map(|s| (*s).to_owned()).collect();
    upstream
        .get_manifest(&image.name, &image.reference, &accept)
        .await
        .with_context(|| format!("fetching {image} from {}", upstreams.describe()))
}

/// `sha256:` and the first 12 hex digits: enough to tell entries apart and to find them in `index inspect`.
pub(crate) fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", hex.get(..12).unwrap_or(hex)),
        None => digest.to_owned(),
    }
}

fn requirements_text(v: &Verdict) -> String {
    match (&v.entry.attests, v.entry.features.is_empty()) {
        (Some(subject), _) => format!("attests {}", short(subject)),
        (None, _) => match v.entry.requirements() {
            r if r.is_empty() => "-".to_owned(),
            r => r.join(","),
        },
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_table(verdicts: &[Verdict]) {
    // REQUIRES: the level a variant implies (`v3 = x86_64_v3`), then the features
    let header = ["DIGEST", "PLATFORM", "REQUIRES", "FITS", "SERVED", "WHY"];
    let rows: Vec<[String; 6]> = verdicts
        .iter()
        .map(|v| {
            [
                short(&v.entry.digest),
                v.entry.platform(),
                requirements_text(v),
                yes_no(v.fits).to_owned(),
                yes_no(v.served).to_owned(),
                v.reason.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn short_digests_keep_twelve_hex_digits() {
        assert_eq!(short(&format!("sha256:{}", "0123456789abcdef".repeat(4))), "sha256:0123456789ab");
        assert_eq!(short("sha256:abc"), "sha256:abc");
        assert_eq!(short("nodigest"), "nodigest");
    }
}
