//! Registry errors as HTTP answers, and what every response carries.

use crate::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
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
        let body = self.error.to_json().to_string();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

pub async fn not_found() -> ApiError {
    Error::new(ErrorCode::NotFound, "no such route; MetaHub serves /v2/ and /token").into()
}

pub async fn unsupported() -> ApiError {
    Error::new(ErrorCode::Unsupported, "MetaHub is read-only: pulls only").into()
}

/// Refuses requests that came around CloudFront, and stamps the API version on every answer.
pub async fn common_layer(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(secret) = &app.config.origin_secret {
        let given = request.headers().get(ORIGIN_VERIFY).map(HeaderValue::as_bytes);
        if !given.is_some_and(|g| constant_time_eq(g, secret.as_bytes())) {
            let mut r =
                ApiError::from(Error::denied("requests must come through the MetaHub distribution")).into_response();
            r.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
            return r;
        }
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An empty body for HEAD, with the length GET would have.
pub fn body_for(method: &axum::http::Method, bytes: bytes::Bytes) -> Body {
    if method == axum::http::Method::HEAD { Body::empty() } else { Body::from(bytes) }
}
