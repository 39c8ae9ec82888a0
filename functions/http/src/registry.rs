//! `/v2/`: the ping, manifests and blobs. Paths are parsed raw (never percent-decoded), so `%2f` or `%2e%2e` in
//! a name is simply an invalid name.

use crate::App;
use crate::auth::authorize;
use crate::response::{ApiError, body_for};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_core::{Error, ErrorCode};
use std::sync::Arc;

pub const CONTENT_DIGEST: &str = "Docker-Content-Digest";

pub async fn ping(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Error::new(ErrorCode::Unsupported, "MetaHub is read-only: pulls only").into());
    }
    authorize(&app, &headers, None)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body_for(&method, "{}".into())).into_response())
}

pub(crate) enum Route {
    Manifest(RepositoryName, Reference),
    Blob(RepositoryName, Digest),
}

/// `<name>/manifests/<reference>` or `<name>/blobs/<digest>`; anything else is an error naming what is wrong.
pub(crate) fn parse_route(path: &str) -> Result<Route, Error> {
    let (name_and_kind, last) =
        path.rsplit_once('/').ok_or_else(|| Error::new(ErrorCode::NotFound, "no such route"))?;
    let (name, kind) =
        name_and_kind.rsplit_once('/').ok_or_else(|| Error::new(ErrorCode::NotFound, "no such route"))?;
    match kind {
        "manifests" => Ok(Route::Manifest(name.parse()?, last.parse()?)),
        "blobs" => Ok(Route::Blob(name.parse()?, last.parse()?)),
        "uploads" | "tags" | "referrers" => {
            Err(Error::new(ErrorCode::Unsupported, format!("MetaHub does not serve {kind}")))
        }
        _ => Err(Error::new(
            ErrorCode::NotFound,
            "no such route; expected <name>/manifests/<reference> or <name>/blobs/<digest>",
        )),
    }
}

pub async fn dispatch(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = uri.path().strip_prefix("/v2/").unwrap_or_default();
    if path == "_catalog" {
        return Err(Error::new(ErrorCode::Unsupported, "MetaHub does not list repositories").into());
    }
    let route = parse_route(path)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(Error::new(ErrorCode::Unsupported, "MetaHub is read-only: pulls only").into());
    }
    match route {
        Route::Manifest(name, reference) => {
            let claims = authorize(&app, &headers, Some(&name))?;
            let manifest = app.registry.manifest(&name, &reference, &claims.mt).await?;
            let mut response = Response::new(body_for(&method, manifest.bytes.clone()));
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, header_value(&manifest.media_type)?);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(manifest.bytes.len()));
            h.insert(CONTENT_DIGEST, header_value(manifest.digest.as_str())?);
            h.insert(header::ETAG, header_value(&format!("\"{}\"", manifest.digest))?);
            Ok(response)
        }
        Route::Blob(name, digest) => {
            authorize(&app, &headers, Some(&name))?;
            let location = app.registry.blob(&name, &digest).await?;
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            response.headers_mut().insert(header::LOCATION, header_value(&location.url)?);
            response.headers_mut().insert(CONTENT_DIGEST, header_value(digest.as_str())?);
            Ok(response)
        }
    }
}

/// Upstream-supplied text (media types, URLs) may not be a valid header: that is the upstream's fault.
fn header_value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::bad_gateway(format!("upstream sent a value unusable in a header: {text:?}")))
}
