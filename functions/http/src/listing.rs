//! `/v2/<name>/tags/list` and `/v2/<name>/referrers/<digest>`: the answers and their headers.

use crate::state::App;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, ErrorCode};
use std::collections::HashMap;

/// Longest `last` accepted: a tag is at most 128 characters; some registries page with longer opaque values.
const MAX_LAST: usize = 1024;

/// The query of a request, decoded; a repeated key keeps its first value.
pub fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    params
}

/// A page of tags with `Link: <…>; rel="next"` when the upstream has more. `name` is the repository as the client
/// named it (`path_name`, before `?ns=`), which is also what the body and the next link say.
pub async fn tags(
    app: &App,
    path_name: &RepositoryName,
    routed: &RepositoryName,
    params: &HashMap<String, String>,
) -> Result<Response, Error> {
    let n = match params.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            Error::new(ErrorCode::PaginationNumberInvalid, format!("n must be a non-negative integer, not {n:?}"))
        })?),
        None => None,
    };
    let last = params.get("last").map(String::as_str);
    if last.is_some_and(|l| l.len() > MAX_LAST || l.chars().any(char::is_control)) {
        return Err(Error::new(ErrorCode::PaginationNumberInvalid, "last is not a tag"));
    }
    let page = app.registry.tags(routed, n, last).await?;
    let body = serde_json::json!({"name": path_name.as_str(), "tags": page.tags}).to_string();
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(next_last) = page.next_last {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            query.append_pair("n", &n.to_string());
        }
        query.append_pair("last", &next_last);
        if let Some(ns) = params.get("ns") {
            query.append_pair("ns", ns);
        }
        let link = format!("</v2/{path_name}/tags/list?{}>; rel=\"next\"", query.finish());
        let value = HeaderValue::from_str(&link)
            .map_err(|_| Error::bad_gateway("upstream paging value is unusable in a Link header"))?;
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

/// The OCI index of `digest`'s referrers, with `OCI-Filters-Applied: artifactType` when filtered.
pub async fn referrers(
    app: &App,
    routed: &RepositoryName,
    digest: &Digest,
    params: &HashMap<String, String>,
) -> Result<Response, Error> {
    let artifact_type = params.get("artifactType").map(String::as_str).filter(|t| !t.is_empty());
    let index = app.registry.referrers(routed, digest, artifact_type).await?;
    let mut response = ([(header::CONTENT_TYPE, metahub_core::filter::OCI_INDEX)], index.bytes).into_response();
    if index.artifact_type_filtered {
        response.headers_mut().insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
    }
    Ok(response)
}
