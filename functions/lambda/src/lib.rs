//! What MetaHub's three Lambda functions share: their configuration (environment + SSM Parameter Store), their
//! logging, and serving one of `metahub-http`'s routers with `lambda_http`. Each function's `main.rs` is wiring only.
//!
//! Configuration (environment; an empty value counts as unset, as CloudFormation passes optional parameters). The
//! rows marked *shared* are read by `metahub_core::settings::SharedSettings::read`, as `metahub serve` reads the same
//! variable or flag, with the same defaults except where a row says otherwise; a duration is seconds (`300`) or
//! with a unit (`5m`, `500ms`):
//!
//! | variable | meaning |
//! |---|---|
//! | `METAHUB_STORE` | required, `dynamodb:TABLE` |
//! | `METAHUB_PUBLIC_URL` | *shared*; the URL clients use, for the token realm; optional behind CloudFront, where the viewer's host arrives in `X-Forwarded-Host` (trusted only with a valid origin secret) |
//! | `METAHUB_FUNCTION_TIMEOUT` | the function's timeout (the template passes the one value it also sets as `Timeout`); every other timeout is derived from it, see [`Budget`]. Default 10s |
//! | `METAHUB_UPSTREAM` | upstream registries, `[PREFIX=]URL` separated by commas or whitespace (as `metahub serve --upstream`), default `https://registry-1.docker.io` |
//! | `METAHUB_SERVICE` | *shared*; `service` of challenges and token audience, default `metahub` |
//! | `METAHUB_TAG_TTL` | *shared*; reuse a tag's upstream check this long after it answered; default 1s, `0`: every pull checks upstream |
//! | `METAHUB_INDEX_DIGEST_PULLS` | *shared*; a pull by an upstream index's digest: `verbatim` (default) or `refuse` |
//! | `METAHUB_TOKEN_TTL` | *shared*; token lifetime, whole seconds; default 5 minutes, at most 1 hour |
//! | `METAHUB_UPSTREAM_TIMEOUT` | *shared*; upstream request timeout; here default and ceiling: the [`Budget`]'s |
//! | `METAHUB_CACHE_MIB` | *shared*; memory all caches together may hold, MiB; here default a quarter of the function's memory |
//! | `METAHUB_MAX_STALE` | *shared*; while the upstream fails, serve a tag's last index at most this long; default 24h, `0`: never |
//! | `METAHUB_ANONYMOUS_MACHINE_TYPE` | *shared*; grant credential-less token requests this machine type (checked at init) |
//! | `METAHUB_SIGNING_KEY_PARAM` | SSM SecureString name: token key, base64 or raw, ≥ 32 bytes; unset: the key kept in the store |
//! | `METAHUB_SIGNING_KEY_REFRESH` | how often an instance re-reads the signing key parameter (`60s` default, at least 1s); a new key version signs only this long after it was written, so every instance knows it first (see `metahub_core::token::TokenKeys`) |
//! | `METAHUB_ORIGIN_SECRET_PARAM` | SSM String name: the `X-Origin-Verify` value CloudFront adds |
//! | `METAHUB_ORIGIN_SECRET_VERSION` | the parameter version CloudFront is pinned to (latest if unset); that version and the one before it are accepted, so a rotation never refuses CloudFront's edges that still send the previous value |
//! | `METAHUB_SELECTION_SIGNING_KEY_PARAM` | SSM SecureString name (registry function): PEM PKCS#8 ECDSA P-256 key that signs each filtered index (docs/signatures.md); needs the host signatures name: `METAHUB_SELECTION_SIGNING_HOST` (template: `DomainName`), else `METAHUB_PUBLIC_URL`'s |
//! | `METAHUB_UPSTREAM_CREDENTIALS_PARAM` | SSM SecureString name: `username:password` for the default upstream, or Docker `config.json` JSON (`{"auths": {"<PREFIX or host>": {"auth": …}}}`) for several |
//!
//! Secrets are only ever read from SSM, never from plain environment variables (those show in the console).

pub mod emf;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use metahub_core::settings::{RuntimeDefaults, SharedSettings};
use metahub_core::token::TokenKeys;
use metahub_http::access_log::RequestId;
use metahub_http::{AdminAuth, AdminPrincipal, App, HttpConfig, app};
use metahub_store_dynamodb::DynamoStore;
use metahub_upstream::{ClientOptions, DEFAULT_UPSTREAM, UpstreamConfig, UpstreamCredentials, UpstreamRouter};
use std::sync::Arc;
use std::time::Duration;

mod parameters;

pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Every instance re-reads the signing key this often: one small SSM call a minute per busy instance.
pub const DEFAULT_SIGNING_KEY_REFRESH: Duration = Duration::from_secs(60);

/// How one request's time is shared out, all derived from the function's timeout: a request never outlives the
/// function (Lambda would kill the instance, its caches and throttle state with it, and the client would get a bare
/// 502), and an upstream call times out early enough that the stale index can still be served in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The whole request, answered `UNAVAILABLE` past it (a margin below the function timeout to send the answer).
    pub request: Duration,
    /// One upstream HTTP request: a tag check may need a token exchange and an index fetch after its HEAD.
    pub upstream_request: Duration,
    /// One DynamoDB operation, retries included.
    pub store_operation: Duration,
}

impl Budget {
    pub fn for_function_timeout(timeout: Duration) -> Budget {
        let margin = (timeout / 10).max(Duration::from_secs(1));
        let request = timeout.saturating_sub(margin).max(Duration::from_secs(1));
        Budget { request, upstream_request: request * 2 / 5, store_operation: request / 5 }
    }
}

/// The functions' configuration as read from the environment; secrets are only named here (SSM parameters), so
/// Debug is safe to log whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub table: String,
    /// What the app is built from; its public URL is empty when unset, and its origin secret and admin
    /// authentication are filled in at init (SSM; the function).
    pub app: app::Settings,
    pub upstream: String,
    pub budget: Budget,
    pub upstream_timeout: Duration,
    pub signing_key_param: Option<String>,
    /// How often the signing key is re-read, and how long a new version waits before it signs.
    pub signing_key_refresh: Duration,
    pub origin_secret_param: Option<String>,
    pub origin_secret_version: Option<u64>,
    pub upstream_credentials_param: Option<String>,
    pub selection_signing_key_param: Option<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests). Empty values count as unset. The
    /// settings `metahub serve` reads too come from [`SharedSettings::read`]; the rest are the functions' own.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let duration =
            |name: &str| get(name).map(|v| parse_duration(&v).with_context(|| format!("{name}={v:?}"))).transpose();

        let store = get("METAHUB_STORE").context("METAHUB_STORE is not set (expected dynamodb:TABLE)")?;
        let table = match store.split_once(':') {
            Some(("dynamodb", table)) if !table.is_empty() => table.to_owned(),
            _ => bail!("METAHUB_STORE={store:?}: a Lambda function needs dynamodb:TABLE"),
        };
        let budget =
            Budget::for_function_timeout(duration("METAHUB_FUNCTION_TIMEOUT")?.unwrap_or(DEFAULT_FUNCTION_TIMEOUT));
        let defaults = RuntimeDefaults {
            cache_bytes: default_cache_bytes(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|m| m.parse().ok())),
            upstream_timeout: budget.upstream_request,
        };
        let shared = SharedSettings::read(&lookup, defaults)?;
        // Never beyond the budget: a longer timeout would let Lambda kill the request instead.
        let upstream_timeout = shared.upstream_timeout.min(budget.upstream_request);
        let origin_secret_version = get("METAHUB_ORIGIN_SECRET_VERSION")
            .map(|v| {
                v.parse::<u64>().ok().filter(|n| *n > 0).with_context(|| {
                    format!("METAHUB_ORIGIN_SECRET_VERSION={v:?} is not a parameter version (1, 2, ...)")
                })
            })
            .transpose()?;
        Ok(Settings {
            table,
            app: app::Settings { selection_host: get("METAHUB_SELECTION_SIGNING_HOST"), ..app::Settings::from(shared) },
            upstream: get("METAHUB_UPSTREAM").unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
            budget,
            upstream_timeout,
            signing_key_param: get("METAHUB_SIGNING_KEY_PARAM"),
            signing_key_refresh: duration("METAHUB_SIGNING_KEY_REFRESH")?
                .unwrap_or(DEFAULT_SIGNING_KEY_REFRESH)
                .max(Duration::from_secs(1)),
            origin_secret_param: get("METAHUB_ORIGIN_SECRET_PARAM"),
            origin_secret_version,
            upstream_credentials_param: get("METAHUB_UPSTREAM_CREDENTIALS_PARAM"),
            selection_signing_key_param: get("METAHUB_SELECTION_SIGNING_KEY_PARAM"),
        })
    }
}

/// A quarter of the function's memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MB): the rest is for the runtime,
/// requests in flight and password checks. Outside Lambda, the `metahub serve` default.
pub fn default_cache_bytes(function_memory_mb: Option<usize>) -> usize {
    function_memory_mb.map_or(RuntimeDefaults::default().cache_bytes, |mb| mb * 1_000_000 / 4)
}

/// A duration as every source reads it ([`metahub_core::settings::parse_duration`]).
pub fn parse_duration(value: &str) -> anyhow::Result<Duration> {
    metahub_core::settings::parse_duration(value).map_err(|e| anyhow!("{}", e.message))
}

/// The token signing key from an SSM value: base64 of ≥ 32 bytes, or ≥ 32 raw bytes.
pub fn decode_signing_key(value: &str) -> anyhow::Result<Vec<u8>> {
    let value = value.trim();
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value)
        && bytes.len() >= 32
    {
        return Ok(bytes);
    }
    if value.len() >= 32 {
        return Ok(value.as_bytes().to_vec());
    }
    bail!("the signing key is shorter than 32 bytes (store 32+ random bytes, base64-encoded or raw)")
}

/// `username:password` from an SSM value.
pub fn split_credentials(value: &str) -> anyhow::Result<(String, String)> {
    let value = value.trim_end_matches(['\r', '\n']);
    match value.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => bail!("upstream credentials must be username:password"),
    }
}

/// `METAHUB_UPSTREAM`: `[PREFIX=]URL` entries separated by commas or whitespace.
pub fn upstream_configs(value: &str) -> anyhow::Result<Vec<UpstreamConfig>> {
    let specs: Vec<&str> = UpstreamConfig::list_entries(value).collect();
    if specs.is_empty() {
        bail!("METAHUB_UPSTREAM names no upstream");
    }
    specs
        .into_iter()
        .map(|spec| UpstreamConfig::parse_spec(spec).map_err(|e| anyhow!("METAHUB_UPSTREAM entry {spec:?}: {e}")))
        .collect()
}

/// The SSM credentials value: Docker `config.json` JSON (several upstreams), or `username:password` (the default).
pub fn parse_upstream_credentials(value: &str) -> anyhow::Result<UpstreamCredentials> {
    if value.trim_start().starts_with('{') {
        return UpstreamCredentials::parse(value).map_err(|e| anyhow!("{e}"));
    }
    let (user, password) = split_credentials(value)?;
    Ok(UpstreamCredentials::for_default(user, password))
}

/// Builds the [`App`] every function serves, from the environment and SSM. The only network calls are the SSM
/// reads that are configured and, without a signing key parameter, the store's signing key; they run concurrently.
/// `admin` is how `/admin/*` authenticates: `AdminAuth::Iam` for the admin function, `Disabled` for the others.
pub async fn app_from_env(admin: AdminAuth) -> anyhow::Result<Arc<App>> {
    let settings = Settings::from_env()?;
    // One config load for every client: region, credentials, AWS_ENDPOINT_URL (moto, LocalStack).
    let aws = metahub_store_dynamodb::aws_config_with_operation_timeout(settings.budget.store_operation).await;
    let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), settings.table.clone()));
    let ssm = aws_sdk_ssm::Client::new(&aws);
    app_with(settings, store, &ssm, admin).await
}

async fn app_with(
    settings: Settings,
    store: Arc<DynamoStore>,
    ssm: &aws_sdk_ssm::Client,
    admin: AdminAuth,
) -> anyhow::Result<Arc<App>> {
    use metahub_core::ports::Store;

    // The registry and token functions name the token realm; the admin function (IAM, no realm) does not.
    if admin == AdminAuth::Disabled && settings.app.http.public_url.is_empty() && settings.origin_secret_param.is_none()
    {
        bail!(
            "METAHUB_PUBLIC_URL is not set (the https:// URL clients reach MetaHub at; the token realm). Behind \
             CloudFront, METAHUB_ORIGIN_SECRET_PARAM makes it optional: the viewer's host is then trusted"
        );
    }
    if settings.selection_signing_key_param.is_some()
        && settings.app.http.public_url.is_empty()
        && settings.app.selection_host.is_none()
    {
        bail!(
            "METAHUB_SELECTION_SIGNING_KEY_PARAM needs METAHUB_SELECTION_SIGNING_HOST (or METAHUB_PUBLIC_URL): \
             selection signatures name images as pulled through MetaHub (<host>/<repository>)"
        );
    }

    // The SSM reads (one call, see `parameters`) and, without a key parameter, the store's key run concurrently.
    let secrets = parameters::read(ssm, &settings);
    let store_key = async {
        match &settings.signing_key_param {
            Some(_) => Ok(None),
            // The admin function issues and verifies no tokens: a throwaway key spares it a read and a permission.
            None if admin != AdminAuth::Disabled => Ok(Some(rand::random::<[u8; 32]>().to_vec())),
            None => store
                .signing_key_or_insert(&rand::random::<[u8; 32]>())
                .await
                .map(Some)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("reading the signing key from DynamoDB table {:?}", settings.table)),
        }
    };
    let (secrets, store_key) = tokio::try_join!(secrets, store_key)?;
    let parameters::Secrets {
        signing_key,
        origin_secrets: origin_secret,
        upstream_credentials: credentials,
        selection_signer,
    } = secrets;
    let service = &settings.app.http.service;
    let ttl = settings.app.token_ttl.as_secs();
    let keys = match (signing_key, store_key) {
        (Some(versions), _) => TokenKeys::versioned(
            versions.current,
            versions.previous,
            service,
            ttl,
            settings.signing_key_refresh.as_secs(),
        ),
        (None, Some(key)) => TokenKeys::new(&key, service, ttl),
        (None, None) => bail!("no signing key"),
    }
    .map_err(|e| anyhow!("token keys: {e}"))?;
    if settings.signing_key_param.is_some() {
        let refresher = KeyRefresher {
            ssm: ssm.clone(),
            settings: settings.clone(),
            keys: keys.clone(),
            last: tokio::sync::Mutex::new(std::time::Instant::now()),
        };
        let _ = KEY_REFRESHER.set(Arc::new(refresher));
    }

    let mut upstreams = upstream_configs(&settings.upstream)?;
    credentials.apply(&mut upstreams).map_err(|e| anyhow!("METAHUB_UPSTREAM_CREDENTIALS_PARAM: {e}"))?;
    let options = ClientOptions::with_timeout(settings.upstream_timeout);
    let upstream = UpstreamRouter::new(&upstreams, &options).map_err(|e| anyhow!("upstream client: {e}"))?;
    let app_settings = app::Settings {
        http: HttpConfig { origin_secret, ..settings.app.http.clone() },
        admin,
        selection_signer,
        ..settings.app.clone()
    };
    tracing::info!(?settings, origin_check = app_settings.http.origin_secret.is_some(), "metahub function ready");
    app::selection_signing(&app_settings).map_err(|e| anyhow!("selection signing: {}", e.message))?;
    Ok(app::build_with_keys(app_settings, store, Arc::new(upstream), keys))
}

/// The signing key re-read of this instance (registry and token functions with `METAHUB_SIGNING_KEY_PARAM`). A
/// process-wide value because it is set while the app is built and used by [`lambda_router`]'s layer, which each
/// function's `main.rs` applies through [`serve`] without knowing about it.
static KEY_REFRESHER: std::sync::OnceLock<Arc<KeyRefresher>> = std::sync::OnceLock::new();

struct KeyRefresher {
    ssm: aws_sdk_ssm::Client,
    settings: Settings,
    keys: TokenKeys,
    /// When the keys were last read; locked across a re-read so that one request does it.
    last: tokio::sync::Mutex<std::time::Instant>,
}

impl KeyRefresher {
    /// Re-reads the signing key when the copy is older than the refresh interval, before the request is served (an
    /// instance thawed after a long pause must know a version others may already sign with). A failed read keeps
    /// the keys in use and is retried at the next interval.
    async fn refresh_if_stale(&self) {
        let mut last = self.last.lock().await;
        if last.elapsed() < self.settings.signing_key_refresh {
            return;
        }
        match parameters::read_signing_keys(&self.ssm, &self.settings).await {
            Ok(versions) => {
                let version = versions.current.version;
                if let Err(e) = self.keys.update(versions.current, versions.previous) {
                    tracing::warn!(error = %e.message, version, "the new signing key is unusable; keeping the one in use");
                }
            }
            Err(e) => tracing::warn!(error = %one_line(&format!("{e:#}")), "could not re-read the signing key"),
        }
        *last = std::time::Instant::now();
    }
}

async fn with_fresh_keys(request: Request, next: Next) -> Response {
    if let Some(refresher) = KEY_REFRESHER.get() {
        refresher.refresh_if_stale().await;
    }
    next.run(request).await
}

/// [`app_from_env`], or: log the error on one line, report it to the Lambda Runtime API as an init error, exit 1.
pub async fn app_or_exit(admin: AdminAuth) -> Arc<App> {
    match app_from_env(admin).await {
        Ok(app) => app,
        Err(error) => {
            let message = one_line(&format!("{error:#}"));
            tracing::error!(error = %message, "metahub configuration error");
            eprintln!("metahub: configuration error: {message}");
            report_init_error(&message).await;
            std::process::exit(1);
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `POST /runtime/init/error`, so the invoke fails with our message instead of a bare exit status. Best effort:
/// plain HTTP/1.1 to `AWS_LAMBDA_RUNTIME_API`, bounded to two seconds.
async fn report_init_error(message: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let body = format!(r#"{{"errorType":"Metahub.ConfigError","errorMessage":{}}}"#, serde_json::Value::from(message));
    let request = format!(
        "POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Lambda-Runtime-Function-Error-Type: Metahub.ConfigError\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(api.as_str()).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await?;
        std::io::Result::Ok(())
    };
    if let Err(e) =
        tokio::time::timeout(Duration::from_secs(2), exchange).await.unwrap_or(Err(std::io::ErrorKind::TimedOut.into()))
    {
        eprintln!("metahub: could not report the init error to the runtime API: {e}");
    }
}

/// Logs and metrics for CloudWatch: metrics as EMF lines on stdout ([`emf`]); logs with no ANSI colours, one JSON
/// object per line (Logs Insights reads the access lines' fields) unless `METAHUB_LOG_FORMAT=text`; the level from
/// `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`, else `info`.
pub fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // `Targets` reads `RUST_LOG`-style `target=level,level` lists without `EnvFilter`'s regex engine, which was
    // ~150 KB of every function's zip (docs/bench.md, "Lambda functions").
    let filter = ["RUST_LOG", "AWS_LAMBDA_LOG_LEVEL"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter(|v| !v.trim().is_empty())
        .find_map(|v| v.trim().parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let json = !std::env::var("METAHUB_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // CloudWatch stamps plain lines itself; JSON lines carry their own time.
    emf::install();
    let _ = if json {
        registry.with(layer.json().flatten_event(true).with_current_span(false)).try_init()
    } else {
        registry.with(layer.without_time()).try_init()
    };
}

/// What `lambda_http` needs done before it turns an answer into a Function URL response: a repeated header is joined
/// into one value, because `lambda_http` writes only the first value of each header into the payload (format 2.0 has
/// no `multiValueHeaders`). HEAD answers already come without a body from the router (`head_without_body`).
async fn for_function_url(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    join_repeated_headers(response.headers_mut());
    response
}

/// Answers `UNAVAILABLE` (registry JSON) when the request would outlive its [`Budget`] or the invocation's deadline,
/// instead of letting Lambda kill the instance.
async fn within_budget(budget: Budget, request: Request, next: Next) -> Response {
    use lambda_http::RequestExt;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let margin = Duration::from_secs(1);
    let limit = request
        .lambda_context_ref()
        .map(|context| {
            Duration::from_millis(u64::try_from(u128::from(context.deadline).saturating_sub(now_ms)).unwrap_or(0))
        })
        .map_or(budget.request, |left| left.saturating_sub(margin).min(budget.request));
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "request abandoned at the end of its time budget");
            let error = metahub_core::Error::unavailable("the request did not finish in time; try again");
            let mut response = axum::response::IntoResponse::into_response(metahub_http::ApiError::from(error));
            let headers = response.headers_mut();
            headers.insert("docker-distribution-api-version", axum::http::HeaderValue::from_static("registry/2.0"));
            headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// One value per header, the values joined with ", " (RFC 9110 §5.3). Set-Cookie is left alone: `lambda_http`
/// moves each of its values into the payload's `cookies`.
fn join_repeated_headers(headers: &mut axum::http::HeaderMap) {
    use axum::http::{HeaderValue, header::SET_COOKIE};
    let repeated: Vec<_> = headers
        .keys()
        .filter(|name| *name != SET_COOKIE && headers.get_all(*name).iter().nth(1).is_some())
        .cloned()
        .collect();
    for name in repeated {
        let joined = headers.get_all(&name).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>().join(&b", "[..]);
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(name, value);
        }
    }
}

/// The router as a function serves it: shaped for the Function URL (see [`for_function_url`]), within `budget`.
pub fn lambda_router(router: Router, budget: Budget) -> Router {
    router
        .layer(axum::middleware::from_fn(for_function_url))
        .layer(axum::middleware::from_fn(with_fresh_keys))
        .layer(axum::middleware::from_fn(move |request: Request, next: Next| within_budget(budget, request, next)))
        .layer(axum::middleware::map_request(with_request_id))
}

/// Lambda's request id, for the access line (it names the invocation in CloudWatch and X-Ray).
async fn with_request_id(mut request: Request) -> Request {
    use lambda_http::RequestExt;
    if let Some(context) = request.lambda_context_ref() {
        let id = RequestId(context.request_id.clone());
        request.extensions_mut().insert(id);
    }
    request
}

/// Serves `router` to the Lambda Runtime API until the process is stopped.
pub async fn serve(router: Router) -> Result<(), lambda_http::Error> {
    // The same budget the app was built with: both read METAHUB_FUNCTION_TIMEOUT.
    let budget = Settings::from_env().map_or(Budget::for_function_timeout(DEFAULT_FUNCTION_TIMEOUT), |s| s.budget);
    lambda_http::run(lambda_router(router, budget)).await
}

/// The admin function's routes. Its Function URL is `AWS_IAM`: Lambda has verified the SigV4 signature, and the
/// caller's ARN from the request context becomes the [`AdminPrincipal`] the admin API requires and records.
pub fn admin_router(app: Arc<App>) -> Router {
    metahub_http::admin_router(app).layer(axum::middleware::map_request(|mut request: Request| async move {
        use lambda_http::RequestExt;
        let caller = request
            .request_context_ref()
            .and_then(|context| context.authorizer())
            .and_then(|authorizer| authorizer.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone().or_else(|| iam.caller_id.clone()));
        if let Some(caller) = caller {
            request.extensions_mut().insert(AdminPrincipal(caller));
        }
        request
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::collections::HashMap;
    use tower::ServiceExt;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] =
        [("METAHUB_STORE", "dynamodb:metahub"), ("METAHUB_PUBLIC_URL", "https://d1.cloudfront.net/")];

    #[test]
    fn defaults() {
        let s = settings(&BASE).unwrap();
        assert_eq!(s.table, "metahub");
        assert_eq!(s.app.http.public_url, "https://d1.cloudfront.net");
        assert_eq!(s.budget, Budget::for_function_timeout(Duration::from_secs(10)));
        assert_eq!(s.upstream_timeout, s.budget.upstream_request);
        assert_eq!(s.upstream, DEFAULT_UPSTREAM);
        assert_eq!(s.app.http.service, "metahub");
        assert_eq!(s.app.cache.tag_ttl, Some(metahub_core::cache::DEFAULT_TAG_TTL));
        assert_eq!(s.app.index_digest_pulls, metahub_core::service::IndexDigestPulls::Verbatim);
        assert_eq!(s.app.token_ttl, metahub_core::settings::DEFAULT_TOKEN_TTL);
        assert_eq!(s.signing_key_param, None);
    }

    #[test]
    fn everything_set_and_empty_is_unset() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("METAHUB_TAG_TTL", "10s"),
            ("METAHUB_TOKEN_TTL", "600"),
            ("METAHUB_ANONYMOUS_MACHINE_TYPE", ""),
            ("METAHUB_SIGNING_KEY_PARAM", "/metahub/key"),
            ("METAHUB_UPSTREAM", "http://127.0.0.1:5000"),
            ("METAHUB_INDEX_DIGEST_PULLS", "refuse"),
        ]);
        let s = settings(&vars).unwrap();
        assert_eq!(s.app.index_digest_pulls, metahub_core::service::IndexDigestPulls::Refuse);
        assert_eq!(s.app.cache.tag_ttl, Some(Duration::from_secs(10)));
        assert_eq!(s.app.token_ttl, Duration::from_secs(600));
        assert_eq!(s.app.http.anonymous_machine_type, None);
        assert_eq!(s.signing_key_param.as_deref(), Some("/metahub/key"));
        // 0 turns the tag window off: every pull checks upstream
        for zero in ["0", "0s"] {
            let vars = [BASE.to_vec(), vec![("METAHUB_TAG_TTL", zero)]].concat();
            assert_eq!(settings(&vars).unwrap().app.cache.tag_ttl, None, "{zero}");
        }
        assert_eq!(s.upstream, "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_config_is_one_clear_line() {
        let e = format!("{:#}", settings(&[("METAHUB_PUBLIC_URL", "https://x")]).unwrap_err());
        assert!(e.contains("METAHUB_STORE"), "{e}");
        let e = format!(
            "{:#}",
            settings(&[("METAHUB_STORE", "file:/tmp/x"), ("METAHUB_PUBLIC_URL", "https://x")]).unwrap_err()
        );
        assert!(e.contains("dynamodb:TABLE"), "{e}");
        let e = format!(
            "{:#}",
            settings(&[
                ("METAHUB_STORE", "dynamodb:t"),
                ("METAHUB_ORIGIN_SECRET_PARAM", "/o"),
                ("METAHUB_ORIGIN_SECRET_VERSION", "latest")
            ])
            .unwrap_err()
        );
        assert!(e.starts_with("METAHUB_ORIGIN_SECRET_VERSION=\"latest\""), "{e}");
        let e = format!(
            "{:#}",
            settings(&[BASE.to_vec(), vec![("METAHUB_ANONYMOUS_MACHINE_TYPE", "skylake v100")]].concat()).unwrap_err()
        );
        assert!(e.starts_with("METAHUB_ANONYMOUS_MACHINE_TYPE=\"skylake v100\": machine type name"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let vars = [BASE.to_vec(), vec![("METAHUB_ANONYMOUS_MACHINE_TYPE", "hsw-m60")]].concat();
        assert_eq!(settings(&vars).unwrap().app.http.anonymous_machine_type.unwrap(), "hsw-m60");
        let e = format!(
            "{:#}",
            settings(&[("METAHUB_STORE", "dynamodb:t"), ("METAHUB_PUBLIC_URL", "d1.cloudfront.net")]).unwrap_err()
        );
        assert!(e.contains("http(s)"), "{e}");
        let mut vars = BASE.to_vec();
        vars.push(("METAHUB_TOKEN_TTL", "soon"));
        let e = format!("{:#}", settings(&vars).unwrap_err());
        assert!(e.starts_with("METAHUB_TOKEN_TTL=\"soon\""), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn behind_cloudfront_the_public_url_is_optional() {
        let s = settings(&[
            ("METAHUB_STORE", "dynamodb:t"),
            ("METAHUB_ORIGIN_SECRET_PARAM", "/metahub/origin-verify"),
            ("METAHUB_ORIGIN_SECRET_VERSION", "3"),
        ])
        .unwrap();
        assert_eq!(s.app.http.public_url, "");
        assert_eq!(s.origin_secret_version, Some(3));
    }

    #[test]
    fn every_timeout_fits_in_the_function_timeout() {
        for seconds in [3, 10, 29, 60, 900] {
            let timeout = Duration::from_secs(seconds);
            let b = Budget::for_function_timeout(timeout);
            assert!(b.request < timeout, "{seconds}");
            // A tag check (HEAD, token, GET) then a store write still end inside the request budget... mostly;
            // what matters is that one slow upstream call leaves time to serve the stale index.
            assert!(b.upstream_request * 2 + b.store_operation <= b.request, "{seconds}: {b:?}");
        }
        let mut vars = BASE.to_vec();
        vars.extend([("METAHUB_FUNCTION_TIMEOUT", "20"), ("METAHUB_UPSTREAM_TIMEOUT", "60s")]);
        let s = settings(&vars).unwrap();
        assert_eq!(s.budget, Budget::for_function_timeout(Duration::from_secs(20)));
        assert_eq!(s.upstream_timeout, s.budget.upstream_request, "an explicit timeout never exceeds the budget");
    }

    #[tokio::test]
    async fn a_request_past_its_budget_is_answered_unavailable() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        };
        let budget = Budget {
            request: Duration::from_millis(10),
            upstream_request: Duration::ZERO,
            store_operation: Duration::ZERO,
        };
        let router = lambda_router(Router::new().route("/slow", axum::routing::get(slow)), budget);
        let request = Request::builder().uri("/slow").body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("\"UNAVAILABLE\""));
    }

    #[test]
    fn signing_keys() {
        let raw = "0123456789abcdef0123456789abcdef";
        assert_eq!(decode_signing_key(raw).unwrap(), raw.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(decode_signing_key(&format!("{b64}\n")).unwrap(), vec![7u8; 32]);
        assert!(decode_signing_key("c2hvcnQ=").is_err());
        assert!(decode_signing_key("short").is_err());
    }

    #[test]
    fn credentials() {
        assert_eq!(split_credentials("bob:pa:ss\n").unwrap(), ("bob".into(), "pa:ss".into()));
        assert!(split_credentials("bob").is_err());
        assert!(split_credentials(":pw").is_err());
        let several = r#"{"auths": {"ghcr.io": {"username": "gh", "password": "pw"}}}"#;
        let mut configs = upstream_configs("https://registry-1.docker.io, ghcr.io=https://ghcr.io").unwrap();
        parse_upstream_credentials(several).unwrap().apply(&mut configs).unwrap();
        assert_eq!(configs[1].username.as_deref(), Some("gh"));
        parse_upstream_credentials("bob:pw").unwrap().apply(&mut configs).unwrap();
        assert_eq!(configs[0].username.as_deref(), Some("bob"));
    }

    #[test]
    fn upstream_lists() {
        let configs =
            upstream_configs("http://127.0.0.1:5000,ghcr.io=https://ghcr.io\nq=http://127.0.0.1:5001").unwrap();
        let prefixes: Vec<&str> = configs.iter().map(|c| c.prefix.as_str()).collect();
        assert_eq!(prefixes, ["", "ghcr.io", "q"]);
        assert!(upstream_configs(" , ").is_err());
        assert!(format!("{:#}", upstream_configs("x=ftp://h").unwrap_err()).contains("x=ftp://h"));
    }

    /// The answer as the Function URL gets it: `router` behind `lambda_http`'s own adapter, for a payload 2.0 event.
    async fn function_url_payload(router: Router, method: &str) -> serde_json::Value {
        use lambda_http::request::LambdaRequest;
        use lambda_http::{Adapter, Context, LambdaEvent, Service};
        let event = serde_json::json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/x", "rawQueryString": "",
            "headers": {"host": "abc.lambda-url.us-east-1.on.aws"},
            "requestContext": {"accountId": "anonymous", "apiId": "abc", "domainName": "abc.lambda-url.us-east-1.on.aws",
                "domainPrefix": "abc", "http": {"method": method, "path": "/x", "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1", "userAgent": "test"}, "requestId": "id", "routeKey": "$default",
                "stage": "$default", "time": "04/Feb/2025:10:12:34 +0000", "timeEpoch": 1_738_663_954_000_i64},
            "isBase64Encoded": false
        });
        let request: LambdaRequest = serde_json::from_value(event).unwrap();
        let mut adapter = Adapter::from(lambda_router(router, Budget::for_function_timeout(DEFAULT_FUNCTION_TIMEOUT)));
        let response = adapter.call(LambdaEvent::new(request, Context::default())).await.unwrap();
        serde_json::to_value(&response).unwrap()
    }

    #[tokio::test]
    async fn repeated_headers_reach_the_function_url_whole() {
        let router = Router::new().route(
            "/x",
            axum::routing::get(|| async {
                let mut response = Response::new(Body::from("{}"));
                let h = response.headers_mut();
                h.append("www-authenticate", "Bearer realm=\"https://a/token\"".parse().unwrap());
                h.append("www-authenticate", "Basic realm=\"a\"".parse().unwrap());
                h.append("set-cookie", "a=1".parse().unwrap());
                h.append("set-cookie", "b=2".parse().unwrap());
                response
            }),
        );
        let payload = function_url_payload(router, "GET").await;
        assert_eq!(payload["headers"]["www-authenticate"], r#"Bearer realm="https://a/token", Basic realm="a""#);
        assert_eq!(payload["cookies"], serde_json::json!(["a=1", "b=2"]));
    }

    #[tokio::test]
    async fn head_keeps_its_content_length_through_lambda_http() {
        let router = Router::new()
            .route("/x", axum::routing::get(|| async { ([(axum::http::header::CONTENT_LENGTH, "7")], "a body!") }));
        let payload = function_url_payload(router, "HEAD").await;
        assert_eq!(payload["headers"]["content-length"], "7");
        assert_eq!(payload["body"].as_str().unwrap_or_default(), "");
    }
}
