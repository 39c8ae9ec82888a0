//! `metahub serve`: every route in one process, on the embedded store or DynamoDB.

use crate::cli::StoreArg;
use anyhow::Context;
use clap::Args;
use metahub_core::service::{CacheOptions, RegistryService};
use metahub_core::token::TokenKeys;
use metahub_http::{AdminAuth, App, HttpConfig};
use metahub_upstream::{ClientOptions, UpstreamConfig, UpstreamRouter};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "METAHUB_LISTEN", default_value_t = crate::cli::default_listen())]
    listen: SocketAddr,
    /// The URL clients use to reach this front (the token realm is built from it); default http://LISTEN.
    #[arg(long, env = "METAHUB_PUBLIC_URL")]
    public_url: Option<String>,
    /// The upstream registry every name is pulled from.
    #[arg(long, env = "METAHUB_UPSTREAM", default_value = "https://registry-1.docker.io")]
    upstream: String,
    /// Upstream login; its password comes from METAHUB_UPSTREAM_PASSWORD only.
    #[arg(long, env = "METAHUB_UPSTREAM_USERNAME")]
    upstream_username: Option<String>,
    #[command(flatten)]
    store: StoreArg,
    /// The `service` of challenges and the audience of tokens.
    #[arg(long, env = "METAHUB_SERVICE", default_value = "metahub")]
    service: String,
    /// Grant token requests without credentials this machine type (off by default).
    #[arg(long, env = "METAHUB_ANONYMOUS_MACHINE_TYPE")]
    anonymous_machine_type: Option<String>,
    /// Reuse a tag's upstream check for this long (e.g. `10s`); off by default: every pull checks upstream.
    #[arg(long, env = "METAHUB_TAG_TTL", value_parser = humantime::parse_duration)]
    tag_ttl: Option<Duration>,
    #[arg(long, env = "METAHUB_TOKEN_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Upstream request timeout.
    #[arg(long, env = "METAHUB_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    upstream_timeout: Duration,
    /// Serve the admin API under /admin/, for requests carrying `Authorization: Bearer <the secret in PATH>`
    /// (at least 32 characters). The secret may also come from METAHUB_ADMIN_SECRET. Neither: no admin API.
    #[arg(long)]
    admin_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default); keep ADDR private.
    #[arg(long, env = "METAHUB_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

/// The admin API's authentication: the secret from `--admin-secret-file` or `METAHUB_ADMIN_SECRET`, if any.
fn admin_auth(file: Option<&Path>) -> anyhow::Result<AdminAuth> {
    let secret = match file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading --admin-secret-file {}", path.display()))?
        }
        None => match std::env::var("METAHUB_ADMIN_SECRET") {
            Ok(secret) if !secret.trim().is_empty() => secret,
            _ => return Ok(AdminAuth::Disabled),
        },
    };
    AdminAuth::secret(&secret).map_err(|e| anyhow::anyhow!("admin secret: {}", e.message))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else: a bad secret must stop the server, not leave it running without its admin API.
    let admin = admin_auth(args.admin_secret_file.as_deref())?;
    if let Some(listen) = args.metrics_listen {
        crate::metrics::serve(listen, crate::metrics::install()?).await?;
    }
    let store = crate::store::open(&args.store.store).await?;
    let key = store.signing_key_or_insert(&rand::random::<[u8; 32]>()).await?;
    let keys = TokenKeys::new(&key, &args.service, args.token_ttl.as_secs())?;

    let mut upstream = UpstreamConfig::from_url(&args.upstream)?;
    if let Some(user) = args.upstream_username {
        let password = std::env::var("METAHUB_UPSTREAM_PASSWORD")
            .context("--upstream-username needs METAHUB_UPSTREAM_PASSWORD")?;
        upstream = upstream.with_credentials(user, password);
    }
    let options = ClientOptions { timeout: args.upstream_timeout, ..ClientOptions::default() };
    let upstream = UpstreamRouter::new(&[upstream], &options)?;
    let registry = RegistryService::new(
        store,
        Arc::new(upstream),
        CacheOptions { tag_ttl: args.tag_ttl, ..CacheOptions::default() },
    );

    let public_url = args.public_url.unwrap_or_else(|| format!("http://{}", args.listen));
    let config = HttpConfig {
        public_url: public_url.trim_end_matches('/').to_owned(),
        service: args.service,
        anonymous_machine_type: args.anonymous_machine_type,
        origin_secret: None,
    };
    let admin_api = admin.is_enabled();
    let app = App::with_admin(registry, keys, config, admin);

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, %public_url, upstream = %args.upstream, store = %args.store.store, admin_api, "metahub serving");
    axum::serve(listener, metahub_http::router(app).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
