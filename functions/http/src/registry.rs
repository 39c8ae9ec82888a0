//! `/v2/`: the ping, manifests, blobs, tag lists and referrers. Paths are parsed raw (never percent-decoded), so `%2f` or `%2e%2e` in
//! a name is simply an invalid name.

use crate::auth::authorize;
use crate::listing;
use crate::response::ApiError;
use crate::state::App;
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
    authorize(&app, &headers, None).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
}

/// A `/v2/<name>/…` route; references are kept raw until the caller is authorized, so that an unauthenticated
/// request is answered 401 whatever it names.
pub(crate) enum Route<'a> {
    Manifest(RepositoryName, &'a str),
    Blob(RepositoryName, &'a str),
    Tags(RepositoryName),
    Referrers(RepositoryName, &'a str),
}

impl Route<'_> {
    fn name(&self) -> &RepositoryName {
        match self {
            Route::Manifest(n, _) | Route::Blob(n, _) | Route::Tags(n) | Route::Referrers(n, _) => n,
        }
    }
}

/// `<name>/manifests/<reference>`, `<name>/blobs/<digest>`, `<name>/tags/list` or `<name>/referrers/<digest>`;
/// anything else is an error naming what is wrong.
pub(crate) fn parse_route(path: &str) -> Result<Route<'_>, Error> {
    let (name_and_kind, last) =
        path.rsplit_once('/').ok_or_else(|| Error::new(ErrorCode::NotFound, "no such route"))?;
    let (name, kind) =
        name_and_kind.rsplit_once('/').ok_or_else(|| Error::new(ErrorCode::NotFound, "no such route"))?;
    match (kind, last) {
        ("manifests", _) => Ok(Route::Manifest(name.parse()?, last)),
        ("blobs", _) => Ok(Route::Blob(name.parse()?, last)),
        ("tags", "list") => Ok(Route::Tags(name.parse()?)),
        ("referrers", _) => Ok(Route::Referrers(name.parse()?, last)),
        ("uploads", _) => Err(Error::new(ErrorCode::Unsupported, "MetaHub is read-only: pulls only")),
        _ => Err(Error::new(
            ErrorCode::NotFound,
            "no such route; expected <name>/manifests/<reference>, <name>/blobs/<digest>, <name>/tags/list or \
             <name>/referrers/<digest>",
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
    let params = listing::query_params(uri.query());
    // `?ns=<registry host>` (containerd mirrors): the name as that registry's upstream is routed here.
    let name = match params.get("ns") {
        Some(ns) => app.registry.name_in_namespace(ns, route.name())?,
        None => route.name().clone(),
    };
    let claims = authorize(&app, &headers, Some(&name)).await?;
    match route {
        Route::Manifest(_, reference) => {
            // Spec and OCI conformance: a reference that cannot exist is an unknown manifest.
            let reference: Reference = reference
                .parse()
                .map_err(|_| Error::manifest_unknown(format!("manifest {name}:{} is unknown", truncate(reference))))?;
            let manifest = app.registry.manifest(&name, &reference, &claims.mt).await?;
            let mut response = Response::new(Body::from(manifest.bytes.clone()));
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, header_value(&manifest.media_type)?);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(manifest.bytes.len()));
            h.insert(CONTENT_DIGEST, header_value(manifest.digest.as_str())?);
            h.insert(header::ETAG, header_value(&format!("\"{}\"", manifest.digest))?);
            Ok(response)
        }
        Route::Blob(_, digest) => {
            let digest: Digest = digest.parse()?;
            // MetaHub's own blobs (its signatures' payload and config) come from the store; all others redirect.
            if let Some(own) = app.registry.own_blob(&name, &digest).await? {
                let mut response = Response::new(Body::from(own.bytes.clone()));
                let h = response.headers_mut();
                h.insert(header::CONTENT_TYPE, header_value(&own.media_type)?);
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(own.bytes.len()));
                h.insert(CONTENT_DIGEST, header_value(own.digest.as_str())?);
                return Ok(response);
            }
            let location = app.registry.blob(&name, &digest).await?;
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            response.headers_mut().insert(header::LOCATION, header_value(&location.url)?);
            response.headers_mut().insert(CONTENT_DIGEST, header_value(digest.as_str())?);
            Ok(response)
        }
        Route::Tags(path_name) => Ok(listing::tags(&app, &path_name, &name, &params).await?),
        Route::Referrers(_, digest) => {
            // Spec: an invalid digest is 400.
            let digest: Digest = digest.parse()?;
            Ok(listing::referrers(&app, &name, &digest, &params).await?)
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(140).collect()
}

/// Upstream-supplied text (media types, URLs) may not be a valid header: that is the upstream's fault.
fn header_value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::bad_gateway(format!("upstream sent a value unusable in a header: {text:?}")))
}
