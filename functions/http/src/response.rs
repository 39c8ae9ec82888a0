//! Registry errors as HTTP answers, and what every response carries.

use crate::state::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metahub_core::{Error, ErrorCode};
use std::sync::Arc;

pub const API_VERSION: &str = "Docker-Distribution-API-Version";
pub const ORIGIN_VERIFY: &str = "X-Origin-Verify";

/// A registry error on its way out; extra headers (challenges, Retry-After) ride along.
#[derive(Debug)]
pub struct ApiError {
    /// Boxed: handlers return `Result<_, ApiError>` everywhere, and the Ok path should stay small.
    pub error: Box<Error>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError { error: Box::new(error), headers: Vec::new() }
    }
}

impl ApiError {
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.error.code.as_str(), message = %self.error.message, "request failed");
        }
        let retry_after = retry_after(&self.error, status, &self.headers);
        let body = self.error.to_json().to_string();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        response.headers_mut().extend(self.headers);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Every 503 and 429 says when to come back (clients back off on it rather than fail at once): the upstream's own
/// `Retry-After` when it gave seconds, else 1 s; unless the answer already carries one (the login throttle's).
fn retry_after(error: &Error, status: StatusCode, headers: &[(header::HeaderName, HeaderValue)]) -> Option<u64> {
    let refused = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
    if !refused || headers.iter().any(|(name, _)| name == header::RETRY_AFTER) {
        return None;
    }
    let upstream = error.detail.as_ref().and_then(|d| d.get("retryAfter")).and_then(|v| v.as_str()?.parse().ok());
    Some(upstream.unwrap_or(1))
}

pub async fn not_found() -> ApiError {
    Error::new(ErrorCode::NotFound, "no such route; MetaHub serves /v2/ and /token").into()
}

pub async fn unsupported() -> ApiError {
    Error::new(ErrorCode::Unsupported, "MetaHub is read-only: pulls only").into()
}

/// Refuses requests that came around CloudFront, and stamps what every answer carries: the API version, and
/// `Cache-Control` so that no cache (CloudFront's error caching included) replays one caller's answer to another.
pub async fn common_layer(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    // Answers to a caller who authenticated are about that caller; the rest must not be stored either.
    let cache_control = HeaderValue::from_static(if request.headers().contains_key(header::AUTHORIZATION) {
        "private, no-store"
    } else {
        "no-store"
    });
    let mut response = match &app.config.origin_secret {
        Some(secrets) if !request.headers().get(ORIGIN_VERIFY).is_some_and(|g| secrets.accepts(g.as_bytes())) => {
            ApiError::from(Error::denied("requests must come through the MetaHub distribution")).into_response()
        }
        _ => next.run(request).await,
    };
    response.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response.headers_mut().insert(header::CACHE_CONTROL, cache_control);
    response
}

/// The URL clients reach this server at, for the token realm. Behind CloudFront (an origin secret is configured,
/// and [`common_layer`] has checked it) the viewer's host arrives in `X-Forwarded-Host`, set by the distribution's
/// viewer-request function; it is trusted only there, and only when it is a plain `host[:port]`.
pub fn public_url(app: &App, headers: &HeaderMap) -> String {
    let forwarded = headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()).filter(|h| is_host(h));
    match forwarded {
        Some(host) if app.config.origin_secret.is_some() => format!("https://{}", host.to_ascii_lowercase()),
        _ if !app.config.public_url.is_empty() => app.config.public_url.trim_end_matches('/').to_owned(),
        // No configured URL and no viewer host: the best remaining guess is the host this request named.
        _ => headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| is_host(h))
            .map_or_else(String::new, |host| format!("https://{host}")),
    }
}

fn is_host(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 260
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one place a HEAD answer loses its body, for `axum::serve` and Lambda alike (`lambda_http` would send it):
/// handlers answer HEAD as GET, and the answer keeps GET's headers, its `Content-Length` included.
pub async fn head_without_body(request: Request, next: Next) -> Response {
    let head = request.method() == axum::http::Method::HEAD;
    let response = next.run(request).await;
    if !head {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Some(length) = axum::body::HttpBody::size_hint(&body).exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(parts, Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use tower::ServiceExt;

    #[test]
    fn every_refusal_says_when_to_come_back() {
        let retry = |error: Error, headers: Vec<(header::HeaderName, HeaderValue)>| {
            let response = ApiError { error: Box::new(error), headers }.into_response();
            response
                .headers()
                .get_all(header::RETRY_AFTER)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(retry(Error::unavailable("store down"), vec![]), ["1"]);
        let limited = Error::new(ErrorCode::TooManyRequests, "rate limited")
            .with_detail(serde_json::json!({ "retryAfter": "30" }));
        assert_eq!(retry(limited, vec![]), ["30"], "the upstream's own");
        let throttled = vec![(header::RETRY_AFTER, HeaderValue::from(8u64))];
        assert_eq!(retry(Error::new(ErrorCode::TooManyRequests, "slow down"), throttled), ["8"], "kept, not doubled");
        assert!(retry(Error::unauthorized("who"), vec![]).is_empty());
        assert!(retry(Error::bad_gateway("odd"), vec![]).is_empty());
    }

    #[tokio::test]
    async fn head_answers_keep_gets_headers_without_the_body() {
        let router = axum::Router::new()
            .route("/x", axum::routing::get(|| async { "a body" }))
            .layer(axum::middleware::from_fn(head_without_body));
        let request = |method| Request::builder().method(method).uri("/x").body(Body::empty()).unwrap();
        let get = router.clone().oneshot(request(Method::GET)).await.unwrap();
        assert_eq!(axum::body::to_bytes(get.into_body(), 4096).await.unwrap(), "a body");
        let head = router.oneshot(request(Method::HEAD)).await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "6");
        assert!(axum::body::to_bytes(head.into_body(), 4096).await.unwrap().is_empty());
    }
}
