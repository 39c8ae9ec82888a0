//! What MetaHub's three Lambda functions share: their configuration (environment + SSM Parameter Store), their
//! logging, and serving one of `metahub-http`'s routers with `lambda_http`. Each function's `main.rs` is wiring only.
//!
//! Configuration (environment; an empty value counts as unset, as CloudFormation passes optional parameters):
//!
//! | variable | meaning |
//! |---|---|
//! | `METAHUB_STORE` | required, `dynamodb:TABLE` |
//! | `METAHUB_PUBLIC_URL` | required: the URL clients use (CloudFront's); the token realm is built from it, since the Host a function sees is not that domain |
//! | `METAHUB_UPSTREAM` | upstream registry, default `https://registry-1.docker.io` |
//! | `METAHUB_SERVICE` | `service` of challenges and token audience, default `metahub` |
//! | `METAHUB_TAG_TTL` | reuse a tag's upstream check this long (`10s`, or seconds); default off |
//! | `METAHUB_TOKEN_TTL` | token lifetime (`5m`, or seconds); default 5 minutes |
//! | `METAHUB_UPSTREAM_TIMEOUT` | upstream request timeout, default 30s |
//! | `METAHUB_ANONYMOUS_MACHINE_TYPE` | grant credential-less token requests this machine type |
//! | `METAHUB_SIGNING_KEY_PARAM` | SSM SecureString name: token key, base64 or raw, ≥ 32 bytes; unset: the key kept in the store |
//! | `METAHUB_ORIGIN_SECRET_PARAM` | SSM SecureString name: the `X-Origin-Verify` value CloudFront adds |
//! | `METAHUB_UPSTREAM_CREDENTIALS_PARAM` | SSM SecureString name: `username:password` for the upstream |
//!
//! Secrets are only ever read from SSM, never from plain environment variables (those show in the console).

pub mod emf;

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use metahub_core::service::{CacheOptions, RegistryService};
use metahub_core::token::TokenKeys;
use metahub_http::access_log::RequestId;
use metahub_http::{AdminAuth, AdminPrincipal, App, HttpConfig};
use metahub_store_dynamodb::DynamoStore;
use metahub_upstream::{ClientOptions, UpstreamConfig, UpstreamRouter};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";
pub const DEFAULT_SERVICE: &str = "metahub";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The functions' configuration as read from the environment; secrets are only named here (SSM parameters).
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub table: String,
    pub public_url: String,
    pub upstream: String,
    pub service: String,
    pub tag_ttl: Option<Duration>,
    pub token_ttl: Duration,
    pub upstream_timeout: Duration,
    pub anonymous_machine_type: Option<String>,
    pub signing_key_param: Option<String>,
    pub origin_secret_param: Option<String>,
    pub upstream_credentials_param: Option<String>,
}

impl fmt::Debug for Settings {
    // Only names and public values: safe to log whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("table", &self.table)
            .field("public_url", &self.public_url)
            .field("upstream", &self.upstream)
            .field("service", &self.service)
            .field("tag_ttl", &self.tag_ttl)
            .field("token_ttl", &self.token_ttl)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("anonymous_machine_type", &self.anonymous_machine_type)
            .field("signing_key_param", &self.signing_key_param)
            .field("origin_secret_param", &self.origin_secret_param)
            .field("upstream_credentials_param", &self.upstream_credentials_param)
            .finish()
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let duration =
            |name: &str| get(name).map(|v| parse_duration(&v).with_context(|| format!("{name}={v:?}"))).transpose();

        let store = get("METAHUB_STORE").context("METAHUB_STORE is not set (expected dynamodb:TABLE)")?;
        let table = match store.split_once(':') {
            Some(("dynamodb", table)) if !table.is_empty() => table.to_owned(),
            _ => bail!("METAHUB_STORE={store:?}: a Lambda function needs dynamodb:TABLE"),
        };
        let public_url = get("METAHUB_PUBLIC_URL")
            .context("METAHUB_PUBLIC_URL is not set (the https:// URL clients reach MetaHub at; the token realm)")?;
        if !(public_url.starts_with("https://") || public_url.starts_with("http://"))
            || public_url.contains(char::is_whitespace)
        {
            bail!("METAHUB_PUBLIC_URL={public_url:?} is not an http(s):// URL");
        }
        Ok(Settings {
            table,
            public_url: public_url.trim_end_matches('/').to_owned(),
            upstream: get("METAHUB_UPSTREAM").unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
            service: get("METAHUB_SERVICE").unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
            tag_ttl: duration("METAHUB_TAG_TTL")?.filter(|d| !d.is_zero()),
            token_ttl: duration("METAHUB_TOKEN_TTL")?.unwrap_or(DEFAULT_TOKEN_TTL),
            upstream_timeout: duration("METAHUB_UPSTREAM_TIMEOUT")?.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            anonymous_machine_type: get("METAHUB_ANONYMOUS_MACHINE_TYPE"),
            signing_key_param: get("METAHUB_SIGNING_KEY_PARAM"),
            origin_secret_param: get("METAHUB_ORIGIN_SECRET_PARAM"),
            upstream_credentials_param: get("METAHUB_UPSTREAM_CREDENTIALS_PARAM"),
        })
    }
}

/// `5m`, `10s`, `1h 30m` (humantime), or a bare number of seconds.
pub fn parse_duration(value: &str) -> anyhow::Result<Duration> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|e| anyhow!("not a duration ({e}); write e.g. 300, 5m or 10s"))
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

/// Reads one SecureString (or String) parameter, decrypted.
async fn ssm_parameter(client: &aws_sdk_ssm::Client, variable: &str, name: &str) -> anyhow::Result<String> {
    let output = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| anyhow!("{}", one_line(&aws_sdk_ssm::error::DisplayErrorContext(e).to_string())))
        .with_context(|| format!("reading SSM parameter {name:?} ({variable})"))?;
    output
        .parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .with_context(|| format!("SSM parameter {name:?} ({variable}) has no value"))
}

/// Builds the [`App`] every function serves, from the environment and SSM. The only network calls are the SSM
/// reads that are configured and, without a signing key parameter, the store's signing key; they run concurrently.
/// `admin` is how `/admin/*` authenticates: `AdminAuth::Iam` for the admin function, `Disabled` for the others.
pub async fn app_from_env(admin: AdminAuth) -> anyhow::Result<Arc<App>> {
    let settings = Settings::from_env()?;
    // One config load for every client: region, credentials, AWS_ENDPOINT_URL (moto, LocalStack).
    let aws = metahub_store_dynamodb::aws_config_from_env().await;
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

    let signing_key = async {
        match &settings.signing_key_param {
            Some(name) => decode_signing_key(&ssm_parameter(ssm, "METAHUB_SIGNING_KEY_PARAM", name).await?)
                .with_context(|| format!("SSM parameter {name:?} (METAHUB_SIGNING_KEY_PARAM)")),
            // The admin function issues and verifies no tokens: a throwaway key spares it a read and a permission.
            None if admin != AdminAuth::Disabled => Ok(rand::random::<[u8; 32]>().to_vec()),
            None => store
                .signing_key_or_insert(&rand::random::<[u8; 32]>())
                .await
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("reading the signing key from DynamoDB table {:?}", settings.table)),
        }
    };
    let origin_secret = async {
        match &settings.origin_secret_param {
            Some(name) => {
                let secret = ssm_parameter(ssm, "METAHUB_ORIGIN_SECRET_PARAM", name).await?.trim().to_owned();
                if secret.is_empty() {
                    bail!("SSM parameter {name:?} (METAHUB_ORIGIN_SECRET_PARAM) is empty");
                }
                Ok(Some(secret))
            }
            None => Ok(None),
        }
    };
    let credentials = async {
        match &settings.upstream_credentials_param {
            Some(name) => split_credentials(&ssm_parameter(ssm, "METAHUB_UPSTREAM_CREDENTIALS_PARAM", name).await?)
                .with_context(|| format!("SSM parameter {name:?} (METAHUB_UPSTREAM_CREDENTIALS_PARAM)"))
                .map(Some),
            None => Ok(None),
        }
    };
    let (signing_key, origin_secret, credentials) = tokio::try_join!(signing_key, origin_secret, credentials)?;

    let keys = TokenKeys::new(&signing_key, &settings.service, settings.token_ttl.as_secs())
        .map_err(|e| anyhow!("token keys: {e}"))?;
    let mut upstream = UpstreamConfig::from_url(&settings.upstream)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("METAHUB_UPSTREAM={:?}", settings.upstream))?;
    if let Some((user, password)) = credentials {
        upstream = upstream.with_credentials(user, password);
    }
    let options = ClientOptions { timeout: settings.upstream_timeout, ..ClientOptions::default() };
    let upstream = UpstreamRouter::new(&[upstream], &options).map_err(|e| anyhow!("upstream client: {e}"))?;
    let registry = RegistryService::new(
        store,
        Arc::new(upstream),
        CacheOptions { tag_ttl: settings.tag_ttl, ..CacheOptions::default() },
    );
    let config = HttpConfig {
        public_url: settings.public_url.clone(),
        service: settings.service.clone(),
        anonymous_machine_type: settings.anonymous_machine_type.clone(),
        origin_secret,
    };
    tracing::info!(?settings, origin_check = config.origin_secret.is_some(), "metahub function ready");
    Ok(App::with_admin(registry, keys, config, admin))
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(std::env::var("AWS_LAMBDA_LOG_LEVEL").unwrap_or_default().to_lowercase()))
        .ok()
        .filter(|f| !f.to_string().is_empty())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = !std::env::var("METAHUB_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr);
    // CloudWatch stamps plain lines itself; JSON lines carry their own time.
    emf::install();
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    } else {
        builder.without_time().try_init()
    };
}

/// Whatever the handler built, a HEAD answer goes out without a body: no hyper strips it here.
async fn head_without_body(request: Request, next: Next) -> Response {
    let head = request.method() == Method::HEAD;
    let response = next.run(request).await;
    if head {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    response
}

/// The router as a function serves it: with empty HEAD bodies.
pub fn lambda_router(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(head_without_body)).layer(axum::middleware::map_request(with_request_id))
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
    lambda_http::run(lambda_router(router)).await
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
        assert_eq!(s.public_url, "https://d1.cloudfront.net");
        assert_eq!(s.upstream, DEFAULT_UPSTREAM);
        assert_eq!(s.service, "metahub");
        assert_eq!(s.tag_ttl, None);
        assert_eq!(s.token_ttl, DEFAULT_TOKEN_TTL);
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
        ]);
        let s = settings(&vars).unwrap();
        assert_eq!(s.tag_ttl, Some(Duration::from_secs(10)));
        assert_eq!(s.token_ttl, Duration::from_secs(600));
        assert_eq!(s.anonymous_machine_type, None);
        assert_eq!(s.signing_key_param.as_deref(), Some("/metahub/key"));
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
        let e = format!("{:#}", settings(&[("METAHUB_STORE", "dynamodb:t")]).unwrap_err());
        assert!(e.contains("METAHUB_PUBLIC_URL"), "{e}");
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
    }

    #[tokio::test]
    async fn head_answers_have_no_body() {
        let router = lambda_router(Router::new().route("/x", axum::routing::get(|| async { "a body" })));
        let head = Request::builder().method(Method::HEAD).uri("/x").body(Body::empty()).unwrap();
        let response = router.oneshot(head).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(axum::body::to_bytes(response.into_body(), 4096).await.unwrap().is_empty());
    }
}
