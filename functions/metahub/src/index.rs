//! `metahub index create|inspect`: the CI side, publishing per-microarchitecture images as one index with features.
//! The work is in `metahub-publish`; this module is arguments and output only.

use crate::upstreams::UpstreamArgs;
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use metahub_core::filter::{DOCKER_MANIFEST, OCI_MANIFEST};
use metahub_core::reference::ImageRef;
use metahub_core::reference::RepositoryName;
use metahub_publish::{Access, Format, Inspection, PushClient, SourceSpec};
use metahub_upstream::{ClientOptions, RegistryClient, UpstreamConfig};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Assemble images into one index whose entries carry features, and push it as TARGET.
    ///
    /// Example: metahub index create org/bench:latest --from org/bench:generic
    /// --from org/bench:cpu-skylake=cpu:skylake --from org/bench:cuda=cpu:skylake,nvcap:7.0
    Create(CreateArgs),
    /// The entries of an index: digests, platforms and features.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct RegistryArgs {
    // The registry TARGET and every REF are on: one `--upstream`, with its credentials as `serve` takes them.
    #[command(flatten)]
    upstreams: UpstreamArgs,
    /// `USER:PASSWORD` for the registry; else METAHUB_UPSTREAM_USERNAME and METAHUB_UPSTREAM_PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    creds: Option<String>,
}

impl RegistryArgs {
    /// The one registry, with `--creds` in place of any other credentials.
    fn config(&self) -> anyhow::Result<UpstreamConfig> {
        let mut configs = self.upstreams.configs()?;
        if configs.len() != 1 {
            bail!("index works on one registry: give one --upstream, not {}", self.upstreams.describe());
        }
        let config = configs.remove(0);
        let Some(creds) = &self.creds else { return Ok(config) };
        // Never echo the value: it holds a password.
        let Some((user, password)) = creds.split_once(':').filter(|(u, _)| !u.is_empty()) else {
            bail!("--creds must be USER:PASSWORD");
        };
        Ok(config.with_credentials(user, password))
    }

    /// The reading side (the upstream adapter, digest-verifying) and the writing side, with the same credentials.
    fn clients(&self, access: &[(RepositoryName, Access)]) -> anyhow::Result<(RegistryClient, PushClient)> {
        let config = self.config()?;
        let reader = RegistryClient::new(&config, &ClientOptions::default())?;
        let writer = PushClient::new(&config.url, config.credentials(), access)?;
        Ok((reader, writer))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// An OCI image index.
    Oci,
    /// A Docker manifest list (Docker schema2 children only).
    Docker,
}

#[derive(Args)]
pub struct CreateArgs {
    /// The index to push: `org/image:tag`.
    target: String,
    /// A source image or index, and the features its entries carry (none: the generic entry). Repeat per source.
    #[arg(long = "from", value_name = "REF[=FEATURE,FEATURE…]", required = true)]
    from: Vec<String>,
    #[arg(long, value_enum, default_value = "oci")]
    format: FormatArg,
    /// Print the index instead of pushing anything.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// `org/image:tag` or `org/image@sha256:…`.
    reference: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn run(command: IndexCommand) -> anyhow::Result<()> {
    match command {
        IndexCommand::Create(args) => create(args).await,
        IndexCommand::Inspect(args) => inspect(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let target: ImageRef = args.target.parse().map_err(|e| anyhow::anyhow!("target {:?}: {e}", args.target))?;
    // Validate every argument before any request.
    let sources = args.from.iter().map(|s| s.parse::<SourceSpec>()).collect::<Result<Vec<_>, _>>()?;
    let format = match args.format {
        FormatArg::Oci => Format::Oci,
        FormatArg::Docker => Format::Docker,
    };
    // One token for the run: push to the target, pull (and mount) from every source repository.
    let mut access = vec![(target.name.clone(), if args.dry_run { Access::Pull } else { Access::PullPush })];
    access.extend(sources.iter().filter(|s| s.image.name != target.name).map(|s| (s.image.name.clone(), Access::Pull)));
    let (reader, writer) = args.registry.clients(&access)?;
    let plan = metahub_publish::plan(&reader, &writer, &target, &sources, format).await?;
    let entries = plan.index.entries.len();
    if args.dry_run {
        println!("{}", String::from_utf8_lossy(&plan.index.bytes));
        eprintln!("dry run: {target} would be {} ({entries} entries); nothing pushed", plan.index.digest);
        return Ok(());
    }
    let report = metahub_publish::push(&writer, &plan).await?;
    for (blob, from) in &report.mounted {
        eprintln!("mounted {blob} from {from}");
    }
    let digest = report.digest.context("the push answered no digest")?;
    eprintln!(
        "pushed {target} ({entries} entries): {} blobs mounted, {} already present, {} child manifests pushed",
        report.mounted.len(),
        report.present,
        report.manifests_pushed
    );
    println!("{}@{digest}", target.name);
    Ok(())
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let image: ImageRef = args.reference.parse().map_err(|e| anyhow::anyhow!("{:?}: {e}", args.reference))?;
    let (reader, writer) = args.registry.clients(&[(image.name.clone(), Access::Pull)])?;
    let found = metahub_publish::inspect(&reader, &writer, &image).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspection_json(&found))?);
    } else {
        print!("{}", inspection_table(&found));
    }
    Ok(())
}

fn inspection_json(i: &Inspection) -> Value {
    let manifests: Vec<Value> = i
        .entries
        .iter()
        .map(|e| {
            json!({
                "digest": e.digest.as_str(),
                "mediaType": e.media_type,
                "size": e.size,
                "platform": e.platform.as_ref().map(|p| p.to_json(&[])),
                "features": e.features,
                "attestationOf": e.attests,
            })
        })
        .collect();
    json!({
        "reference": i.reference,
        "digest": i.digest.as_str(),
        "mediaType": i.media_type,
        "index": i.is_index,
        "manifests": manifests,
    })
}

/// `sha256:` and 12 hex digits: enough to tell entries apart, short enough for a table.
fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", hex.chars().take(12).collect::<String>()),
        None => digest.to_owned(),
    }
}

fn inspection_table(i: &Inspection) -> String {
    let kind =
        if i.is_index { format!("{} entries", i.entries.len()) } else { "a single manifest, not an index".into() };
    let mut out = format!("{}  {}  {}  ({kind})\n", i.reference, i.digest, i.media_type);
    let mut rows = vec![["#".to_owned(), "DIGEST".into(), "PLATFORM".into(), "FEATURES".into(), "TYPE".into()]];
    for (n, e) in i.entries.iter().enumerate() {
        let features = match (&e.attests, e.features.is_empty()) {
            (Some(subject), _) => format!("attestation of {}", short(subject)),
            (None, true) => "(generic)".to_owned(),
            (None, false) => e.features.join(","),
        };
        let platform = e.platform.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        let kind = match e.media_type.as_str() {
            OCI_MANIFEST => "oci manifest".to_owned(),
            DOCKER_MANIFEST => "docker manifest".to_owned(),
            other => other.to_owned(),
        };
        rows.push([n.to_string(), short(e.digest.as_str()), platform, features, kind]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
