//! `metahub serve`: every route in one process, on the embedded store or DynamoDB.

use crate::cli::StoreArg;
use anyhow::Context;
use clap::Args;
use metahub_core::cache::{CacheOptions, DEFAULT_CACHE_BYTES, DEFAULT_MAX_STALE, DEFAULT_TAG_TTL};
use metahub_core::cosign::SelectionSigner;
use metahub_core::machine::MachineTypeName;
use metahub_core::service::IndexDigestPulls;
use metahub_http::{AdminAuth, HttpConfig, app};
use metahub_upstream::ClientOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "METAHUB_LISTEN", default_value_t = crate::cli::default_listen())]
    listen: SocketAddr,
    /// The URL clients use to reach this front (the token realm is built from it); default http://LISTEN.
    #[arg(long, env = "METAHUB_PUBLIC_URL")]
    public_url: Option<String>,
    #[command(flatten)]
    upstreams: crate::upstreams::UpstreamArgs,
    #[command(flatten)]
    store: StoreArg,
    /// The `service` of challenges and the audience of tokens.
    #[arg(long, env = "METAHUB_SERVICE", default_value = app::DEFAULT_SERVICE)]
    service: String,
    /// Grant token requests without credentials this machine type (off by default).
    #[arg(long, env = "METAHUB_ANONYMOUS_MACHINE_TYPE", value_parser = machine_type_name_arg)]
    anonymous_machine_type: Option<MachineTypeName>,
    /// Reuse a tag's upstream check for this long after it answered: a tag moved upstream is served at most this
    /// long late, and a fleet pulling one tag costs one upstream HEAD per window. `0s`: every pull checks upstream.
    #[arg(long, env = "METAHUB_TAG_TTL", default_value_t = DEFAULT_TAG_TTL.into(), value_parser = duration_arg)]
    tag_ttl: humantime::Duration,
    /// A pull by the digest of an upstream index (a pin) cannot be filtered: `verbatim` serves the whole index,
    /// `refuse` answers DENIED naming the digest of the image the machine type is served. See the README.
    #[arg(long, env = "METAHUB_INDEX_DIGEST_PULLS", default_value_t = IndexDigestPulls::default(), value_parser = parse_index_digest_pulls)]
    index_digest_pulls: IndexDigestPulls,
    /// Token lifetime, at most 1h (`metahub_core::token::MAX_TOKEN_TTL`).
    #[arg(long, env = "METAHUB_TOKEN_TTL", default_value_t = app::DEFAULT_TOKEN_TTL.into(), value_parser = duration_arg)]
    token_ttl: humantime::Duration,
    /// Memory all caches together may hold, MiB (manifests weighed by size).
    #[arg(long, env = "METAHUB_CACHE_MIB", default_value_t = (DEFAULT_CACHE_BYTES >> 20) as u64)]
    cache_mib: u64,
    /// While the upstream fails, serve a tag's last index for at most this long (`0s`: never).
    #[arg(long, env = "METAHUB_MAX_STALE", default_value_t = DEFAULT_MAX_STALE.into(), value_parser = duration_arg)]
    max_stale: humantime::Duration,
    /// Upstream request timeout.
    #[arg(long, env = "METAHUB_UPSTREAM_TIMEOUT", default_value_t = ClientOptions::default().timeout.into(), value_parser = duration_arg)]
    upstream_timeout: humantime::Duration,
    /// Serve the admin API under /admin/, for requests carrying `Authorization: Bearer <the secret in PATH>`
    /// (at least 32 characters). The secret may also come from METAHUB_ADMIN_SECRET. Neither: no admin API.
    #[arg(long)]
    admin_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default); a loopback address unless
    /// --metrics-public is given too.
    #[arg(long, env = "METAHUB_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Allow a --metrics-listen address that is not loopback: the metrics name accounts' machine types and
    /// repositories, so keep that address on a private network.
    #[arg(long, env = "METAHUB_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Timeouts and the connection cap of every listener.
    #[command(flatten)]
    limits: crate::listen::Limits,
    /// Sign each filtered index with this ECDSA P-256 key (PEM, PKCS#8), served as its cosign signature (the tag
    /// `sha256-<hex>.sig` and its referrers); the file must not be readable by group or others. The PEM may also
    /// come from METAHUB_SELECTION_SIGNING_KEY. Neither: no signatures. See docs/signatures.md.
    #[arg(long, env = "METAHUB_SELECTION_SIGNING_KEY_FILE")]
    selection_signing_key: Option<PathBuf>,
}

fn parse_index_digest_pulls(value: &str) -> Result<IndexDigestPulls, String> {
    value.parse().map_err(|e: metahub_core::Error| e.message)
}

/// The admin API's authentication: the secret from `--admin-secret-file` or `METAHUB_ADMIN_SECRET`, if any.
fn admin_auth(file: Option<&Path>) -> anyhow::Result<AdminAuth> {
    let secret = match file {
        Some(path) => metahub_core::files::read_private(path, "--admin-secret-file")?,
        None => match std::env::var("METAHUB_ADMIN_SECRET") {
            Ok(secret) if !secret.trim().is_empty() => secret,
            _ => return Ok(AdminAuth::Disabled),
        },
    };
    AdminAuth::secret(&secret).map_err(|e| anyhow::anyhow!("admin secret: {}", e.message))
}

/// The selection signing key from `--selection-signing-key` or `METAHUB_SELECTION_SIGNING_KEY`, if any. A key file
/// that group or others can read is refused: the key signs what every node trusts.
fn selection_signer(file: Option<&Path>) -> anyhow::Result<Option<Arc<SelectionSigner>>> {
    let source = file.map_or_else(|| "METAHUB_SELECTION_SIGNING_KEY".to_owned(), |p| p.display().to_string());
    let pem = match file {
        Some(path) => metahub_core::files::read_private(path, "--selection-signing-key")
            .map_err(|e| anyhow::anyhow!("{}", e.message))?,
        None => match std::env::var("METAHUB_SELECTION_SIGNING_KEY") {
            Ok(pem) if !pem.trim().is_empty() => pem,
            _ => return Ok(None),
        },
    };
    let signer = SelectionSigner::from_pkcs8_pem(&pem).map_err(|e| anyhow::anyhow!("{source}: {}", e.message))?;
    Ok(Some(Arc::new(signer)))
}

/// A duration flag, read as the Lambda settings read the same variable (bare seconds or humantime).
/// Checked at start-up: a typo would otherwise fail every anonymous pull later.
fn machine_type_name_arg(value: &str) -> Result<MachineTypeName, String> {
    value.parse().map_err(|e: metahub_core::Error| {
        format!("{} (--anonymous-machine-type or METAHUB_ANONYMOUS_MACHINE_TYPE)", e.message)
    })
}

pub fn duration_arg(value: &str) -> Result<humantime::Duration, String> {
    metahub_core::settings::parse_duration(value).map(Into::into).map_err(|e| e.message)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else: a bad secret must stop the server, not leave it running without its admin API.
    let admin = admin_auth(args.admin_secret_file.as_deref())?;
    let limits = args.limits.validated()?;
    let selection_signer = selection_signer(args.selection_signing_key.as_deref())?;
    if let Some(listen) = args.metrics_listen {
        if !listen.ip().is_loopback() && !args.metrics_public {
            anyhow::bail!(
                "--metrics-listen {listen} is not a loopback address: the metrics name machine types and repositories; \
                 add --metrics-public to serve them there anyway (on a private network only)"
            );
        }
        crate::metrics::serve(listen, crate::metrics::install()?, limits).await?;
    }
    let store = crate::store::open(&args.store.store).await?;
    let key = store.signing_key_or_insert(&rand::random::<[u8; 32]>()).await?;
    let upstream = args.upstreams.router(&ClientOptions::with_timeout(*args.upstream_timeout))?;

    let public_url = args.public_url.unwrap_or_else(|| format!("http://{}", args.listen));
    let admin_api = admin.is_enabled();
    let settings = app::Settings {
        http: HttpConfig {
            public_url: public_url.clone(),
            service: args.service,
            anonymous_machine_type: args.anonymous_machine_type,
            origin_secret: None,
        },
        token_ttl: *args.token_ttl,
        cache: CacheOptions {
            tag_ttl: Some(*args.tag_ttl).filter(|d| !d.is_zero()),
            max_bytes: usize::try_from(args.cache_mib << 20).context("--cache-mib is too large")?,
            max_stale: *args.max_stale,
            ..CacheOptions::default()
        },
        index_digest_pulls: args.index_digest_pulls,
        admin,
        selection_signer: selection_signer.clone(),
        selection_host: None,
    };
    let app = app::build(settings, store, Arc::new(upstream), &key)?;

    let listener = crate::listen::bind(args.listen, "--listen").await?;
    let selection_key = selection_signer.as_ref().map(|s| s.fingerprint().to_owned());
    tracing::info!(listen = %args.listen, %public_url, upstreams = %args.upstreams.describe(), store = %args.store.store, admin_api, selection_key_sha256 = selection_key.as_deref(), "metahub serving");
    crate::listen::serve(listener, metahub_http::router(app), limits, "registry", async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serving")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// The same text means the same setting to `serve` as to the Lambda functions (`metahub_lambda::parse_duration`
    /// reads the environment through the same `settings::parse_duration`).
    #[test]
    fn duration_flags_read_bare_seconds_as_the_lambda_settings_do() {
        for (text, seconds) in [("300", 300), ("5m", 300), ("0", 0), ("0s", 0)] {
            let serve = Serve::try_parse_from(["serve", "--tag-ttl", text, "--max-stale", text]).unwrap();
            assert_eq!(*serve.args.tag_ttl, Duration::from_secs(seconds), "{text}");
            assert_eq!(*serve.args.max_stale, Duration::from_secs(seconds), "{text}");
            assert_eq!(metahub_core::settings::parse_duration(text).unwrap(), Duration::from_secs(seconds));
        }
        assert!(Serve::try_parse_from(["serve", "--tag-ttl", "soon"]).is_err());
    }

    #[test]
    fn the_anonymous_machine_type_is_checked_at_start_up() {
        let serve = Serve::try_parse_from(["serve", "--anonymous-machine-type", "hsw-m60"]).unwrap();
        assert_eq!(serve.args.anonymous_machine_type.unwrap(), "hsw-m60");
        let e = Serve::try_parse_from(["serve", "--anonymous-machine-type", "hsw m60"]).err().unwrap().to_string();
        let first = e.lines().next().unwrap();
        assert!(first.contains("--anonymous-machine-type"), "{e}");
        assert!(first.contains("METAHUB_ANONYMOUS_MACHINE_TYPE") && first.contains("machine type name"), "{e}");
    }
}
