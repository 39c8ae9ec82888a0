//! `metahub admin ui --endpoint URL`: the admin page of a MetaHub whose admin API a browser cannot authenticate to by
//! itself (the admin function's `AWS_IAM` Function URL), through a proxy on 127.0.0.1 that authenticates each request
//! the way every `--endpoint` command does (SigV4 with the operator's AWS credentials, or `METAHUB_ADMIN_SECRET`).
//!
//! The proxy adds a credential to whatever reaches it, so it guards what may reach it:
//! - it listens on loopback only, and answers only requests whose `Host` is its own address (no DNS rebinding);
//! - it answers only a browser that opened the URL it printed: that URL carries a random token of this run, which
//!   the first request exchanges for a cookie (`HttpOnly; SameSite=Strict`) holding another random value; the
//!   token then no longer works, and other local users, who never saw either, are refused;
//! - it forwards `/admin` paths only, judged after resolving `.` and `..` segments, percent-encoded ones included
//!   (the HTTP client would resolve them after the check), and forwards the resolved path;
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
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Timeouts and the connection cap of the proxy's listener.
    #[command(flatten)]
    limits: crate::listen::Limits,
}

/// The query parameter of the printed URL that carries the run's token.
const TOKEN_PARAMETER: &str = "token";
/// The cookie the token is exchanged for.
const COOKIE: &str = "metahub_ui";

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
    /// The token of the printed URL, good for one exchange.
    token: String,
    token_used: AtomicBool,
    /// The cookie's value, given in exchange for the token.
    cookie: String,
}

/// 256 random bits, URL-safe.
fn random_value() -> String {
    use std::fmt::Write as _;
    rand::random::<[u8; 32]>().iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Compares secrets without telling, by the time taken, how much of them matched.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "--listen {}: the proxy adds your credentials to every request; it listens on loopback only",
            args.listen
        );
    }
    let limits = args.limits.validated()?;
    let api = AdminApiClient::new(&args.endpoint).await?;
    let listener = crate::listen::bind(args.listen, "--listen").await?;
    let address = listener.local_addr()?;
    let proxy = Arc::new(Proxy {
        api,
        host: address.to_string(),
        origin: format!("http://{address}"),
        token: random_value(),
        token_used: AtomicBool::new(false),
        cookie: random_value(),
    });
    let mut out = std::io::stdout();
    writeln!(
        out,
        "MetaHub admin page for {}: http://{address}/admin/?{TOKEN_PARAMETER}={} (open it once; Ctrl-C to stop)",
        args.endpoint, proxy.token
    )?;
    out.flush()?;
    let app = Router::new().fallback(forward).with_state(proxy);
    crate::listen::serve(listener, app, limits, "admin ui proxy", async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("serving the admin ui proxy")
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::NOT_FOUND { ErrorCode::NotFound } else { ErrorCode::Denied };
    let error = Error::new(code, message);
    (status, [(header::CONTENT_TYPE, "application/json")], error.to_json().to_string()).into_response()
}

/// `path` with its `.` and `..` segments resolved, percent-encoded ones included (`%2e`, `%2E%2e`, …), as an HTTP
/// client would resolve them; other segments are kept as sent. `None` for a path that climbs above the root, or
/// that has a backslash or an encoded `/` or `\` (clients and servers disagree on what those separate).
fn resolve_dots(path: &str) -> Option<String> {
    let lowered = path.to_ascii_lowercase();
    if path.contains('\\') || ["%2f", "%5c"].iter().any(|encoded| lowered.contains(encoded)) {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment.to_ascii_lowercase().replace("%2e", ".").as_str() {
            "." => {}
            ".." => {
                kept.pop()?;
            }
            _ => {
                kept.push(segment);
                continue;
            }
        }
        // A dot segment at the end still names a directory: `/admin/x/..` is `/admin/`.
        if i == last {
            kept.push("");
        }
    }
    Some(format!("/{}", kept.join("/")))
}

/// The value of the run's token in a query string, if it has one.
fn token_in(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|pair| pair.strip_prefix(TOKEN_PARAMETER)?.strip_prefix('='))
}

/// The value of the proxy's cookie, if the request has one.
fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The answer to the printed URL: the cookie, and the same page without the token. Once only.
fn exchange(proxy: &Proxy, given: &str, path: &str) -> Response {
    if !same_secret(given, &proxy.token) || proxy.token_used.swap(true, Ordering::SeqCst) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this link of `metahub admin ui` is wrong or was already used; restart `metahub admin ui` for a new one",
        );
    }
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", proxy.cookie);
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, path.to_owned())]).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Why a request must not be forwarded, if it must not.
fn refusal(
    proxy: &Proxy,
    method: &Method,
    path: Option<&str>,
    headers: &HeaderMap,
) -> Option<(StatusCode, &'static str)> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if header(header::HOST) != Some(proxy.host.as_str()) {
        return Some((StatusCode::FORBIDDEN, "this proxy answers requests for its own address only"));
    }
    if !cookie_of(headers).is_some_and(|c| same_secret(c, &proxy.cookie)) {
        return Some((
            StatusCode::FORBIDDEN,
            "open the URL `metahub admin ui` printed (it carries this run's token) in this browser first",
        ));
    }
    if !path.is_some_and(|p| p == "/admin" || p.starts_with("/admin/")) {
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
    let resolved = resolve_dots(uri.path());
    if let Some(given) = token_in(uri.query())
        && headers.get(header::HOST).and_then(|v| v.to_str().ok()) == Some(proxy.host.as_str())
        && matches!(method, Method::GET)
    {
        let page = resolved.as_deref().filter(|p| p.starts_with("/admin")).unwrap_or("/admin/");
        return exchange(&proxy, given, page);
    }
    if let Some((status, why)) = refusal(&proxy, &method, resolved.as_deref(), &headers) {
        return refuse(status, why);
    }
    let Some(resolved) = resolved else { return refuse(StatusCode::NOT_FOUND, "no such path") };
    let path = match uri.query() {
        Some(query) => format!("{resolved}?{query}"),
        None => resolved,
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let answer = match proxy.api.forward(method, &path, content_type, body).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved_encoded_or_not() {
        for (path, resolved) in [
            ("/admin/", Some("/admin/")),
            ("/admin", Some("/admin")),
            ("/admin/machine-types/x", Some("/admin/machine-types/x")),
            ("/admin/../token", Some("/token")),
            ("/admin/%2e%2e/token", Some("/token")),
            ("/admin/%2E%2E/v2/x", Some("/v2/x")),
            ("/admin/.%2e/token", Some("/token")),
            ("/admin/./../metrics", Some("/metrics")),
            ("/admin/%2e/accounts", Some("/admin/accounts")),
            ("/admin/accounts/..", Some("/admin/")),
            ("/admin/a/b/../../accounts", Some("/admin/accounts")),
            ("/admin/...", Some("/admin/...")),
            ("/admin/%2e%2e%2e", Some("/admin/%2e%2e%2e")),
            ("/admin/../..", None),
            ("/admin/%2f..%2ftoken", None),
            ("/admin/%2F../token", None),
            ("/admin\\..\\token", None),
            ("/admin/%5c..%5ctoken", None),
            ("admin", None),
        ] {
            assert_eq!(resolve_dots(path).as_deref(), resolved, "{path}");
        }
    }

    #[test]
    fn the_token_is_found_in_the_query() {
        assert_eq!(token_in(Some("token=abc")), Some("abc"));
        assert_eq!(token_in(Some("a=1&token=abc")), Some("abc"));
        assert_eq!(token_in(Some("tokens=abc")), None);
        assert_eq!(token_in(None), None);
        assert!(same_secret("abc", "abc") && !same_secret("abd", "abc") && !same_secret("ab", "abc"));
        assert_eq!(random_value().len(), 64);
        assert_ne!(random_value(), random_value());
    }
}
