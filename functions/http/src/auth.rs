//! Bearer tokens on `/v2/*`: the challenge, verification, scope checks; and the source of a `/token` request.

use crate::App;
use crate::response::ApiError;
use axum::http::{HeaderMap, HeaderValue, header};
use metahub_core::Error;
use metahub_core::reference::RepositoryName;
use metahub_core::token::Claims;
use std::net::SocketAddr;

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
        .and_then(|v| credentials_of_scheme(v, "Bearer"));
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
    Ok(claims)
}

/// The credentials of an `Authorization` value in `scheme`, matched case-insensitively (RFC 7235 §2.1).
pub fn credentials_of_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, credentials) = value.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| credentials.trim())
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
