//! `metahub admin ui --endpoint URL`: the admin page of a MetaHub whose admin API a browser cannot authenticate to by
//! itself (the admin function's `AWS_IAM` Function URL), through a proxy on 127.0.0.1 that authenticates each request
//! the way every `--endpoint` command does (SigV4 with the operator's AWS credentials, or `METAHUB_ADMIN_SECRET`).
//!
//! The proxy adds a credential to whatever reaches it, so it guards what may reach it:
//! - it listens on loopback only, and answers only requests whose `Host` is its own address (no DNS rebinding);
//! - it forwards `/admin` paths only;
//! - a write must carry `X-MetaHub-CSRF` (the page always sends it; another site cannot without a CORS preflight,
//!   which is never granted) and, when the browser sends one, an `Origin` that is the proxy itself;
//! - the browser's `Cookie` and `Authorization` headers are never forwarded.

use crate::admin_client::AdminApiClient;
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use metahub_core::{Error, ErrorCode};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

/// Open the admin page of a MetaHub through a local proxy that authenticates every request.
#[derive(Args)]
pub struct UiArgs {
    /// The admin API: the admin function's URL (`https://<id>.lambda-url.<region>.on.aws`), or a `metahub serve
    /// --admin-secret-file` (then with METAHUB_ADMIN_SECRET).
    #[arg(long, env = "METAHUB_ADMIN_ENDPOINT")]
    endpoint: String,
    /// Where the proxy listens: a loopback address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

const CSRF_HEADER: &str = "x-metahub-csrf";
/// Headers of the admin API's answers the browser gets, as they are.
const ANSWER_HEADERS: [header::HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::CONTENT_SECURITY_POLICY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::REFERRER_POLICY,
    header::CACHE_CONTROL,
    header::LOCATION,
];

struct Proxy {
    api: AdminApiClient,
    /// `127.0.0.1:PORT`, as the browser's `Host` header names the proxy.
    host: String,
    /// `http://127.0.0.1:PORT`, as the browser's `Origin` header names the page.
    origin: String,
}

pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the proxy adds your credentials to every request; it listens on loopback only",
            args.listen
        );
    }
    let api = AdminApiClient::new(&args.endpoint).await?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr()?;
    let proxy = Arc::new(Proxy { api, host: address.to_string(), origin: format!("http://{address}") });
    let mut out = std::io::stdout();
    writeln!(out, "MetaHub admin page for {}: http://{address}/admin/ (Ctrl-C to stop)", args.endpoint)?;
    out.flush()?;
    let app = Router::new().fallback(forward).with_state(proxy);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::NOT_FOUND { ErrorCode::NotFound } else { ErrorCode::Denied };
    let error = Error::new(code, message);
    (status, [(header::CONTENT_TYPE, "application/json")], error.to_json().to_string()).into_response()
}

/// Why a request must not be forwarded, if it must not.
fn refusal(proxy: &Proxy, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if header(header::HOST) != Some(proxy.host.as_str()) {
        return Some((StatusCode::FORBIDDEN, "this proxy answers requests for its own address only"));
    }
    if !(uri.path() == "/admin" || uri.path().starts_with("/admin/")) {
        return Some((StatusCode::NOT_FOUND, "this proxy serves the admin page and API under /admin/ only"));
    }
    if header(header::ORIGIN).is_some_and(|o| o != proxy.origin) {
        return Some((StatusCode::FORBIDDEN, "requests from another origin are refused"));
    }
    let write = !matches!(*method, Method::GET | Method::HEAD);
    if write && !headers.contains_key(CSRF_HEADER) {
        return Some((StatusCode::FORBIDDEN, "a write must come from the admin page (X-MetaHub-CSRF header)"));
    }
    None
}

async fn forward(
    State(proxy): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((status, why)) = refusal(&proxy, &method, &uri, &headers) {
        return refuse(status, why);
    }
    let path = uri.path_and_query().map_or("/admin/", |p| p.as_str());
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let answer = match proxy.api.forward(method, path, content_type, body).await {
        Ok(answer) => answer,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, [(header::CONTENT_TYPE, "application/json")], e.to_json().to_string()).into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut kept = HeaderMap::new();
    for name in ANSWER_HEADERS {
        if let Some(value) = answer.headers().get(&name).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            kept.insert(name, value);
        }
    }
    match answer.bytes().await {
        Ok(bytes) => (status, kept, bytes).into_response(),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, &format!("reading the admin API's answer: {e}")),
    }
}
