//! `metahub explain TYPE IMAGE`: every entry of IMAGE's index, whether it fits TYPE and why, and the one served.
//!
//! It renders the core's [`Explanation`], built by the same functions `serve` filters with, so what this prints is
//! what a machine of TYPE is served; `--json` is what `/admin/explain` answers.

use crate::cli::StoreArg;
use crate::upstreams::UpstreamArgs;
use anyhow::{Context, bail};
use clap::Args;
use metahub_core::explain::{Explanation, Outcome, PASSTHROUGH};
use metahub_core::filter::{self, ACCEPT_ALL, Verdict};
use metahub_core::nvidia::GpuRequirements;
use metahub_core::ports::{Manifest, Upstream};
use metahub_core::reference::ImageRef;
use metahub_core::service::read_index_requirements;
use metahub_upstream::ClientOptions;

#[derive(Args)]
pub struct ExplainArgs {
    /// The machine type, as stored.
    machine_type: String,
    #[command(flatten)]
    source: ImageArgs,
}

/// An image, the upstreams it is read from and the store the machine types are read from: what `explain` and
/// `pins` read.
#[derive(Args)]
pub struct ImageArgs {
    /// `org/image:tag`, `org/image@sha256:…` or `org/image` (tag latest) on the upstream.
    image: String,
    /// The upstreams the image is read from, as `serve` routes names to them.
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

impl ImageArgs {
    pub fn image(&self) -> anyhow::Result<ImageRef> {
        self.image.parse().with_context(|| format!("image {:?}", self.image))
    }
}

pub async fn run(ExplainArgs { machine_type, source: args }: ExplainArgs) -> anyhow::Result<()> {
    let image = args.image()?;
    let machine = {
        let store = crate::store::open(&args.store.store).await?;
        let Some(machine) = store.machine_type(&machine_type.parse()?).await? else {
            bail!("no machine type {:?} in store {}", machine_type, args.store.store);
        };
        machine
        // The store closes here: the embedded store is single-process, so it is not held during the upstream fetch.
    };

    let (manifest, requirements) = fetch(&image, &args.upstreams).await?;
    let explained = Explanation::new(&image, &manifest, &machine, &requirements)?;
    if args.json {
        println!("{}", explained.to_json());
    } else {
        print!("{}", table(&explained));
    }
    Ok(())
}

/// The upstream's manifest of `image`, as `serve` routes its name, and for an index the driver dimension: each
/// child's NVIDIA_REQUIRE_*, read from its config as `serve` reads it.
pub(crate) async fn fetch(image: &ImageRef, upstreams: &UpstreamArgs) -> anyhow::Result<(Manifest, GpuRequirements)> {
    let upstream = upstreams.router(&ClientOptions::default())?;
    let accept: Vec<String> = ACCEPT_ALL.iter().map(|s| (*s).to_owned()).collect();
    let manifest = upstream
        .get_manifest(&image.name, &image.reference, &accept)
        .await
        .with_context(|| format!("fetching {image} from {}", upstreams.describe()))?;
    if !filter::is_index_media_type(&manifest.media_type) {
        return Ok((manifest, GpuRequirements::new()));
    }
    let requirements = read_index_requirements(&upstream, &image.name, &manifest)
        .await
        .with_context(|| format!("reading the configs of {image}'s builds"))?;
    Ok((manifest, requirements))
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

/// The explanation as a table, one row per entry, between what was explained and what a pull is served.
fn table(explained: &Explanation) -> String {
    let (image, digest, media_type) = (&explained.image, short(explained.digest.as_str()), &explained.media_type);
    let (verdicts, pull) = match &explained.outcome {
        Outcome::Passthrough => return format!("{image} {digest} ({media_type}) is {PASSTHROUGH}\n"),
        Outcome::Index { verdicts, pull } => (verdicts, pull),
    };
    let machine = &explained.machine_type;
    let mut out = format!("{image} {digest} ({media_type})\n");
    out +=
        &format!("machine type {} [{}] ({})\n\n", machine.name(), machine.features().join(", "), machine.match_mode());
    out += &entries_table(verdicts);
    out += "\n";
    out += &match pull {
        Ok(filtered) => {
            let served = explained.served().count();
            format!("served: {served} of {} entries, as index {filtered}\n", verdicts.len())
        }
        Err(e) => format!("served: nothing; a pull answers {}: {}\n", e.code.as_str(), e.message),
    };
    out
}

fn entries_table(verdicts: &[Verdict]) -> String {
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
        format!("{}\n", out.trim_end())
    };
    let mut out = line(header);
    for row in &rows {
        out += &line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metahub_core::filter::{OCI_INDEX, OCI_MANIFEST};
    use metahub_core::machine::{MachineType, MatchMode};
    use metahub_core::reference::Digest;
    use serde_json::json;

    fn explained(media_type: &str, body: serde_json::Value, features: &[&str]) -> Explanation {
        let bytes = serde_json::to_vec(&body).unwrap();
        let manifest =
            Manifest { digest: Digest::sha256_of(&bytes), media_type: media_type.into(), bytes: bytes.into() };
        let features = features.iter().map(|f| f.to_string()).collect();
        let machine = MachineType::new("sky", features, MatchMode::Best).unwrap();
        Explanation::new(&"org/app".parse().unwrap(), &manifest, &machine, &GpuRequirements::new()).unwrap()
    }

    fn skylake_index() -> serde_json::Value {
        let entry = |digest: &str, features: &[&str]| {
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1,
                   "platform": {"os": "linux", "architecture": "amd64", "features": features}})
        };
        let (generic, skylake) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": [entry(&generic, &[]), entry(&skylake, &["cpu:skylake"])]})
    }

    #[test]
    fn the_table_renders_the_explanation() {
        let out = table(&explained(OCI_INDEX, skylake_index(), &["cpu:cascadelake"]));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("org/app:latest sha256:") && lines[0].ends_with(&format!("({OCI_INDEX})")));
        assert_eq!(lines[1], "machine type sky [cpu:cascadelake] (best)");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "DIGEST               PLATFORM     REQUIRES     FITS  SERVED  WHY");
        assert!(lines[4].starts_with("sha256:aaaaaaaaaaaa  linux/amd64  -            yes   no      generic"), "{out}");
        assert!(lines[5].starts_with("sha256:bbbbbbbbbbbb  linux/amd64  cpu:skylake  yes   yes     every"), "{out}");
        assert_eq!(lines[6], "");
        assert!(lines[7].starts_with("served: 1 of 2 entries, as index sha256:"), "{out}");
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn the_table_says_what_a_pull_answers_when_nothing_fits() {
        let mut only_skylake = skylake_index();
        only_skylake["manifests"].as_array_mut().unwrap().remove(0);
        let out = table(&explained(OCI_INDEX, only_skylake, &["cpu:broadwell"]));
        let last = out.lines().last().unwrap();
        assert!(
            last.starts_with("served: nothing; a pull answers MANIFEST_UNKNOWN: no image of this index fits"),
            "{out}"
        );
    }

    #[test]
    fn a_single_manifest_is_one_line() {
        let out = table(&explained(OCI_MANIFEST, json!({"schemaVersion": 2, "layers": []}), &[]));
        assert!(out.starts_with("org/app:latest sha256:") && out.ends_with(&format!("is {PASSTHROUGH}\n")), "{out}");
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn short_digests_keep_twelve_hex_digits() {
        assert_eq!(short(&format!("sha256:{}", "0123456789abcdef".repeat(4))), "sha256:0123456789ab");
        assert_eq!(short("sha256:abc"), "sha256:abc");
        assert_eq!(short("nodigest"), "nodigest");
    }
}
