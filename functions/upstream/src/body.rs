//! Reading answer bodies with a bound: an upstream decides how much it sends, we decide how much we read.

use bytes::{Bytes, BytesMut};
use reqwest::Response;
use reqwest::header::CONTENT_LENGTH;

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
