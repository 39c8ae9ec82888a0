//! The operator's web page at `/admin/`, and the routes only it needs: the sign-in session, the watched images and
//! the matrix (each watched image × each machine type: what a pull is served).
//!
//! Security design (see docs/admin-ui.md):
//! - **Assets are public, data is not.** The HTML, CSS and script are embedded in the binary and hold no data; every
//!   data route goes through `require_admin`. Behind the admin function's `AWS_IAM` Function URL, AWS refuses every
//!   unsigned request, assets included: operators reach it through `metahub admin ui`, which signs with SigV4.
//! - **Sign-in** (`metahub serve --admin-secret-file`): the page POSTs the secret once to `/admin/session`; the answer
//!   sets `metahub_admin=<session id>.<expiry>.<HMAC(secret, id.expiry)>`, `HttpOnly; SameSite=Strict; Path=/admin`,
//!   so no script can read it and no other site's request carries it. Each sign-in gets its own random session id,
//!   which the audit log records with every change made in that session. Any process checks the cookie by its HMAC
//!   and asks the store whether the session was signed out ([`Store::revoke_session`], so a sign-out holds across
//!   Lambda instances); it ends after [`SESSION_LIFETIME`], at sign-out, and for every session at once when the
//!   secret changes.
//! - **CSRF**: a write authenticated by that cookie must also carry `X-MetaHub-CSRF: <HMAC(secret, cookie)>`. Only a
//!   same-origin script can read that token (from `/admin/session`), and no other origin can send a custom header
//!   without a CORS preflight, which is never granted. SameSite=Strict already keeps the cookie off cross-site requests.
//! - **Content-Security-Policy** `default-src 'none'` with script, style and fetches from `'self'` only, no framing,
//!   on every response of these routes; the script builds the page with `textContent`, never HTML from data.

use crate::admin::{self, AdminAuth, AdminPrincipal, Operator, invalid, ok_json, parse_body};
use crate::response::{ApiError, constant_time_eq};
use crate::state::App;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use metahub_core::admin::{AdminPort, parse_watched_image};
use metahub_core::explain::Explanation;
use metahub_core::machine::MachineType;
#[cfg(doc)]
use metahub_core::ports::Store;
use metahub_core::reference::ImageRef;
use metahub_core::token::now_seconds;
use metahub_core::{Error, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

pub const SESSION_COOKIE: &str = "metahub_admin";
pub const CSRF_HEADER: &str = "x-metahub-csrf";
/// A sign-in lasts a working day.
pub const SESSION_LIFETIME: u64 = 12 * 3600;
/// The page's bodies are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let data = Router::new()
        .route(
            "/admin/watched-images",
            get(list_watched).post(watch).delete(unwatch).fallback(admin::method_not_allowed),
        )
        .route("/admin/matrix", get(matrix).fallback(admin::method_not_allowed))
        .route_layer(axum::middleware::from_fn_with_state(app, admin::require_admin));
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route("/admin/ui/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/admin/ui/app.css", get(|| asset("text/css; charset=utf-8", APP_CSS)))
        .route("/admin/session", get(session).post(sign_in).delete(sign_out).fallback(admin::method_not_allowed))
        .merge(data)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// What every admin answer carries, JSON included: no sniffing, no framing, no caching, no referrer.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn mac(secret: &str, purpose: &str, value: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    mac
}

/// A new session id: 128 random bits, URL-safe (no `.`, which separates the cookie's fields).
fn new_session_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

fn session_value(secret: &str, id: &str, expires: u64) -> String {
    let signed = format!("{id}.{expires}");
    let tag = mac(secret, "session", &signed).finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fn csrf_token(secret: &str, session: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, "csrf", session).finalize().into_bytes())
}

/// The session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// A session cookie this secret issued, not yet expired (whether it was signed out is the store's to say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub id: String,
    pub expires_at: u64,
}

/// The session `value` names, if this secret issued it and it has not expired.
fn session_valid(secret: &str, value: &str) -> Option<Session> {
    let (signed, tag) = value.rsplit_once('.')?;
    let (id, expires) = signed.split_once('.')?;
    let (Ok(expires_at), Ok(tag)) = (expires.parse::<u64>(), URL_SAFE_NO_PAD.decode(tag)) else { return None };
    if id.is_empty() || expires_at <= now_seconds() || mac(secret, "session", signed).verify_slice(&tag).is_err() {
        return None;
    }
    Some(Session { id: id.to_owned(), expires_at })
}

/// The session of a valid cookie that was not signed out; a store failure counts as signed out (refuse, not trust).
async fn live_session(app: &App, secret: &str, value: &str) -> Option<Session> {
    let session = session_valid(secret, value)?;
    match app.registry.store().session_revoked(&session.id).await {
        Ok(false) => Some(session),
        Ok(true) => None,
        Err(e) => {
            tracing::warn!(error = %e.message, "checking an admin session against the store failed");
            None
        }
    }
}

/// Authenticates a request by its session cookie (the page's requests), for `require_admin`: the session of a
/// valid, unexpired, not signed-out cookie with, on a write, the matching CSRF header; otherwise the reason to refuse.
pub(crate) async fn check_session(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    secret: &str,
) -> Result<Session, &'static str> {
    let Some(session) = session_cookie(headers) else {
        return Err("admin credentials required: Authorization: Bearer <admin secret>, or sign in at /admin/");
    };
    let Some(live) = live_session(app, secret, session).await else {
        return Err("the admin session has expired, was signed out or is invalid: sign in again at /admin/");
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        let given = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
        if !constant_time_eq(given, csrf_token(secret, session).as_bytes()) {
            return Err("a write from the admin page must carry its X-MetaHub-CSRF token");
        }
    }
    Ok(live)
}

fn cookie(value: &str, max_age: u64, app: &App) -> HeaderValue {
    // Secure whenever operators reach the server over https; a plain-http 127.0.0.1 server could not set it.
    let secure = if app.config.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("metahub_admin=; Max-Age=0"))
}

/// Whether the page is signed in, how, and the CSRF token its writes carry.
async fn session(State(app): State<Arc<App>>, request: Request) -> Response {
    let signed_out = |mode| ok_json(json!({"signedIn": false, "mode": mode}));
    match &app.admin {
        AdminAuth::Disabled => signed_out("disabled"),
        AdminAuth::Iam => match request.extensions().get::<AdminPrincipal>().filter(|p| !p.0.is_empty()) {
            // Every request is signed by `metahub admin ui`, which checks writes' origin itself.
            Some(p) => ok_json(json!({"signedIn": true, "mode": "iam", "via": "iam", "principal": p.0, "csrf": ""})),
            None => signed_out("iam"),
        },
        AdminAuth::Secret(secret) => {
            let secret = secret.expose_str();
            // A proxy in front that adds the bearer secret to every request (no ambient cookie: no token needed).
            if crate::auth::bearer(request.headers()).is_some_and(|b| constant_time_eq(b.as_bytes(), secret.as_bytes()))
            {
                return ok_json(json!({"signedIn": true, "mode": "secret", "via": "bearer", "csrf": ""}));
            }
            let Some(value) = session_cookie(request.headers()) else { return signed_out("secret") };
            match live_session(&app, secret, value).await {
                Some(_) => ok_json(
                    json!({"signedIn": true, "mode": "secret", "via": "cookie", "csrf": csrf_token(secret, value)}),
                ),
                None => signed_out("secret"),
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    secret: String,
}

async fn sign_in(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let AdminAuth::Secret(secret) = &app.admin else {
        return Err(
            Error::new(ErrorCode::Unsupported, "this server signs admin requests with AWS IAM, not a secret").into()
        );
    };
    let secret = secret.expose_str();
    // A cross-site form cannot send JSON without a CORS preflight.
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !json.starts_with("application/json") {
        return Err(invalid("sign in with a JSON body {\"secret\": …} (Content-Type: application/json)").into());
    }
    let given: SignIn = parse_body(&body)?;
    if !constant_time_eq(given.secret.trim().as_bytes(), secret.as_bytes()) {
        tracing::warn!("admin page sign-in with a wrong secret refused");
        return Err(Error::unauthorized("invalid admin secret").into());
    }
    let id = new_session_id();
    let value = session_value(secret, &id, now_seconds() + SESSION_LIFETIME);
    tracing::info!(session = %id, "admin page signed in");
    let mut response =
        ok_json(json!({"signedIn": true, "mode": "secret", "via": "cookie", "csrf": csrf_token(secret, &value)}));
    response.headers_mut().insert(header::SET_COOKIE, cookie(&value, SESSION_LIFETIME, &app));
    Ok(response)
}

/// Ends the session on the server (recorded in the store: every process refuses its cookie from now on), then in
/// the browser.
async fn sign_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let AdminAuth::Secret(secret) = &app.admin
        && let Some(session) = session_cookie(&headers).and_then(|v| session_valid(secret.expose_str(), v))
    {
        app.registry.store().revoke_session(&session.id, session.expires_at).await?;
        tracing::info!(session = %session.id, "admin page signed out");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie("", 0, &app));
    Ok(response)
}

async fn list_watched(Operator(admin): Operator) -> Result<Response, ApiError> {
    Ok(ok_json(json!(admin.watched_images().await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchBody {
    image: String,
}

async fn watch(Operator(admin): Operator, body: Bytes) -> Result<Response, ApiError> {
    let (image, added) = admin.watch_image(&parse_watched_image(&parse_body::<WatchBody>(&body)?.image)?).await?;
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(json!({"image": image}))).into_response())
}

async fn unwatch(
    Operator(admin): Operator,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    admin.unwatch_image(&parse_watched_image(admin::query_param(&query, "image")?)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn error_json(e: &Error) -> Value {
    json!({"code": e.code.as_str(), "message": e.message})
}

/// One row of the matrix: the image's upstream manifest, explained for every machine type (the cells).
async fn matrix_row(app: &App, image: &str, machine_types: &[MachineType]) -> Value {
    let fetched = match image.parse::<ImageRef>() {
        Ok(parsed) => app.registry.upstream_manifest(&parsed).await.map(|m| (parsed, m)),
        Err(e) => Err(e),
    };
    match fetched {
        Ok((parsed, manifest)) => {
            let requirements = match admin::gpu_requirements(app, &parsed, &manifest).await {
                Ok(r) => r,
                Err(e) => return json!({"image": image, "fault": error_json(&e)}),
            };
            let cells: Vec<Value> = machine_types
                .iter()
                .map(|mt| match Explanation::new(&parsed, &manifest, mt, &requirements) {
                    Ok(explained) => explained.to_json(),
                    Err(e) => json!({"fault": error_json(&e)}),
                })
                .collect();
            json!({"image": image, "digest": manifest.digest.to_string(), "cells": cells})
        }
        Err(e) => json!({"image": image, "fault": error_json(&e)}),
    }
}

/// Every watched image × every machine type, each cell the same explanation `/admin/explain` gives. The images are
/// fetched concurrently; an image the upstream cannot serve fills its row with its error, not the whole answer.
async fn matrix(State(app): State<Arc<App>>, Operator(admin): Operator) -> Result<Response, ApiError> {
    let machine_types = Arc::new(admin.machine_types().await?);
    let images = admin.watched_images().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (row, image) in images.iter().enumerate() {
        let (app, image, machine_types) = (app.clone(), image.clone(), machine_types.clone());
        tasks.spawn(async move { (row, matrix_row(&app, &image, &machine_types).await) });
    }
    let mut rows = vec![Value::Null; images.len()];
    while let Some(done) = tasks.join_next().await {
        let (row, value) = done.map_err(|e| Error::internal(format!("matrix row failed: {e}")))?;
        rows[row] = value;
    }
    let types: Vec<Value> = machine_types.iter().map(MachineType::to_json).collect();
    Ok(ok_json(json!({"machineTypes": types, "images": rows})))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sessions_are_bound_to_the_secret_and_expire() {
        let expires_at = now_seconds() + 60;
        let live = session_value(SECRET, "abc", expires_at);
        assert_eq!(session_valid(SECRET, &live), Some(Session { id: "abc".into(), expires_at }));
        assert!(session_valid("another secret of thirty-two chars", &live).is_none());
        assert!(session_valid(SECRET, &session_value(SECRET, "abc", now_seconds() - 1)).is_none(), "expired");
        let (_, tag) = live.rsplit_once('.').unwrap();
        assert!(session_valid(SECRET, &format!("abc.{}.{tag}", now_seconds() + 999_999)).is_none(), "expiry is signed");
        assert!(session_valid(SECRET, &format!("abd.{expires_at}.{tag}")).is_none(), "the id is signed");
        for junk in ["", ".", "..", "x.y", "1.", "a.1.", ".1.x", "a.99999999999.%%%"] {
            assert!(session_valid(SECRET, junk).is_none(), "{junk:?}");
        }
    }

    #[test]
    fn every_session_gets_its_own_id() {
        let ids: std::collections::HashSet<String> = (0..100).map(|_| new_session_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|id| id.len() == 22 && !id.contains('.')));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; metahub_admin=v.t; b=2"));
        assert_eq!(session_cookie(&headers), Some("v.t"));
        headers.insert(header::COOKIE, HeaderValue::from_static("metahub_administrator=x"));
        assert_eq!(session_cookie(&headers), None);
    }
}
