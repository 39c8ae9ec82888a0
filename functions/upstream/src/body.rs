//! Reading answer bodies with a bound: an upstream decides how much it sends, we decide how much we read.

use bytes::{Bytes, BytesMut};
use reqwest::Response;
use reqwest::header::CONTENT_LENGTH;
use serde::Deserialize;

/// Error bodies are small; never read more than this of one.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// One entry of a registry error body, `{"errors": [{"code": …, "message": …}]}`.
#[derive(Debug, Deserialize)]
pub struct RegistryError {
    pub code: String,
    /// Any JSON: registries are not strict about it; see [`RegistryError::message`].
    #[serde(default)]
    message: serde_json::Value,
}

impl RegistryError {
    /// The message, when it is a string.
    pub fn message(&self) -> &str {
        self.message.as_str().unwrap_or_default()
    }
}

/// The errors of a registry error body (read up to 64 KiB); none when the body is not one.
pub async fn registry_errors(resp: &mut Response) -> Vec<RegistryError> {
    #[derive(Deserialize)]
    struct Envelope {
        errors: Vec<RegistryError>,
    }
    match read_limited(resp, ERROR_BODY_LIMIT).await {
        Ok(Some(body)) => serde_json::from_slice::<Envelope>(&body).map(|e| e.errors).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The body, or `None` as soon as it is known to be over `limit` bytes (by its Content-Length, or while streaming:
/// the rest is never read).
pub async fn read_limited(resp: &mut Response, limit: usize) -> Result<Option<Bytes>, reqwest::Error> {
    if content_length(resp.headers()).is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// The Content-Length header, if it is a number.
pub(crate) fn content_length(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}
