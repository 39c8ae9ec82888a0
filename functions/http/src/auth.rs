//! Bearer tokens on `/v2/*`: the challenge, verification, scope checks; and the login throttle of `/token`.

use crate::App;
use crate::response::ApiError;
use axum::http::{HeaderMap, HeaderValue, header};
use metahub_core::reference::RepositoryName;
use metahub_core::token::Claims;
use metahub_core::{Error, ErrorCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `Bearer realm=…,service=…[,scope=…][,error=…]`, as the token auth spec writes it.
fn challenge(app: &App, scope: Option<&str>, error: Option<&str>) -> HeaderValue {
    let mut value = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        app.config.public_url.trim_end_matches('/'),
        app.config.service
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    // Built from configuration and validated names only; a failure here is a configuration bug.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The claims of a valid bearer token that may pull `repository` (or any valid token, for the ping).
pub fn authorize(app: &App, headers: &HeaderMap, repository: Option<&RepositoryName>) -> Result<Claims, ApiError> {
    let scope = repository.map(|r| format!("repository:{r}:pull"));
    let refuse = |error: Error, reason: Option<&str>| {
        ApiError::from(error).with_header(header::WWW_AUTHENTICATE, challenge(app, scope.as_deref(), reason))
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = token else {
        return Err(refuse(Error::unauthorized("authentication required"), None));
    };
    let claims = app.keys.verify(token).map_err(|e| refuse(e, Some("invalid_token")))?;
    if let Some(repository) = repository
        && !claims.may_pull(repository)
    {
        return Err(refuse(
            Error::unauthorized(format!("token does not grant pull of {repository}")),
            Some("insufficient_scope"),
        ));
    }
    metahub_core::observe::machine_type(&claims.mt);
    Ok(claims)
}

const WINDOW: Duration = Duration::from_secs(60);
const MAX_FAILURES: u32 = 10;
const MAX_TRACKED: usize = 10_000;

/// Counts failed logins per account and per source; past the limit, logins are refused for the rest of the window.
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginThrottle {
    fn keys(login: &str, source: Option<&str>) -> Vec<String> {
        let mut keys = vec![format!("login:{login}")];
        keys.extend(source.map(|s| format!("source:{s}")));
        keys
    }

    /// Refuses with `TOOMANYREQUESTS` and `Retry-After` while the account or source is locked out.
    pub fn check(&self, login: &str, source: Option<&str>) -> Result<(), ApiError> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in Self::keys(login, source) {
            if let Some((start, count)) = failures.get(&key)
                && *count >= MAX_FAILURES
                && start.elapsed() < WINDOW
            {
                let retry = WINDOW.saturating_sub(start.elapsed()).as_secs().max(1);
                return Err(ApiError::from(Error::new(
                    ErrorCode::TooManyRequests,
                    "too many failed logins; try again later",
                ))
                .with_header(header::RETRY_AFTER, HeaderValue::from(retry)));
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, login: &str, source: Option<&str>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > MAX_TRACKED {
            failures.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        for key in Self::keys(login, source) {
            let entry = failures.entry(key).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= WINDOW {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
        }
    }
}

/// The client's address, for throttling: behind CloudFront (an origin secret is configured) the
/// `CloudFront-Viewer-Address` header, which CloudFront sets itself; otherwise the peer of the connection.
/// `X-Forwarded-For` is never trusted: a client could change it on every try.
pub fn source_of(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    if app.config.origin_secret.is_some() {
        let viewer = headers.get("cloudfront-viewer-address").and_then(|v| v.to_str().ok())?;
        // "ip:port", where an IPv6 ip itself contains colons.
        return Some(viewer.rsplit_once(':').map_or(viewer, |(ip, _)| ip).to_owned());
    }
    peer.map(|p| p.ip().to_string())
}
