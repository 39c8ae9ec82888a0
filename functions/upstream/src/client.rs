//! One upstream registry over HTTP: digest verification, blob locations, and the mapping of every upstream answer onto
//! the one error table; every request authenticates through [`UpstreamAuth`].
//!
//! URLs are only ever built from the configured base URL plus an already validated name, tag or digest; the only other
//! origin ever contacted is a token realm the allow-list of [`crate::auth`] takes (the upstream's own origin, Docker
//! Hub's `auth.docker.io`, or one configured).

use crate::auth::UpstreamAuth;
use crate::body::{content_length, read_limited, registry_errors};
use crate::config::{ClientOptions, UpstreamConfig, is_docker_hub_host, parse_base_url};
use async_trait::async_trait;
use bytes::Bytes;
use metahub_core::ports::{BlobLocation, Manifest, ManifestHead, Referrers, TagPage, Upstream};
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, Response, StatusCode, Url, redirect};
use serde::Deserialize;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// What a request was after, for 404 mapping and messages.
enum Target<'a> {
    Manifest(&'a RepositoryName, &'a Reference),
    Blob(&'a RepositoryName, &'a Digest),
    /// The repository itself (tag list, referrers): a 404 means the name is unknown.
    Repository(&'a RepositoryName),
}

const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";

/// A client for one upstream registry.
pub struct RegistryClient {
    base: Url,
    /// Credentials, tokens, realms; and how messages name the upstream (`auth.label()`: by its PREFIX, which the
    /// client typed itself, or `the default upstream`; never by its host, which only the logs show).
    auth: UpstreamAuth,
    docker_hub: bool,
    /// Built on first use: loading and parsing the CA root store is most of a client's cost, and a Lambda function
    /// that never calls the upstream (token) or not before its first request should not pay it during init.
    http: OnceLock<std::result::Result<reqwest::Client, String>>,
    timeout: Duration,
    connect_timeout: Duration,
    max_manifest_bytes: usize,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .field("docker_hub", &self.docker_hub)
            .field("auth", &self.auth)
            .field("max_manifest_bytes", &self.max_manifest_bytes)
            .finish()
    }
}

impl RegistryClient {
    pub fn new(config: &UpstreamConfig, options: &ClientOptions) -> Result<Self> {
        let base = parse_base_url(&config.url)?;
        Ok(RegistryClient {
            docker_hub: config.docker_hub || is_docker_hub_host(&base),
            base,
            auth: UpstreamAuth::new(config)?,
            http: OnceLock::new(),
            timeout: options.timeout,
            connect_timeout: options.connect_timeout,
            max_manifest_bytes: options.max_manifest_bytes,
        })
    }

    fn http(&self) -> Result<&reqwest::Client> {
        let built = self.http.get_or_init(|| {
            crate::http_client_builder()
                .redirect(redirect::Policy::none())
                .timeout(self.timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(concat!("metahub/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        });
        built.as_ref().map_err(|e| Error::internal(e.clone()))
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The name as the upstream knows it (Docker Hub's official images live under `library/`).
    fn upstream_name(&self, name: &RepositoryName) -> RepositoryName {
        if self.docker_hub && name.segments() == 1 { name.with_prefix("library") } else { name.clone() }
    }

    /// `<base>/v2/<name>/<kind>/<reference>`, from validated parts only.
    fn api_url(&self, name: &RepositoryName, kind: &str, reference: &str) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::internal(format!("{} has no usable base URL", self.auth.label())))?
            .clear()
            .push("v2")
            .extend(name.as_str().split('/'))
            .push(kind)
            .push(reference);
        Ok(url)
    }

    fn scope(name: &RepositoryName) -> String {
        format!("repository:{name}:pull")
    }

    /// Sends a request through [`UpstreamAuth::send`] (challenge, token or Basic, one retry).
    async fn send(&self, method: Method, url: &Url, accept: Option<&HeaderValue>, scope: String) -> Result<Response> {
        let http = self.http()?;
        tracing::debug!(upstream = %self.auth.host(), %method, url = %url, "upstream request");
        let build = || {
            let req = http.request(method.clone(), url.clone());
            match accept {
                Some(a) => req.header(ACCEPT, a.clone()),
                None => req,
            }
        };
        self.auth.send(http, std::slice::from_ref(&scope), build).await
    }

    // ---- answers and errors ---------------------------------------------------------------------------------------

    /// Reads a body, refusing (without reading on) any body over `limit` bytes.
    async fn read_limited(&self, resp: &mut Response, limit: usize, what: &str) -> Result<Bytes> {
        read_limited(resp, limit).await.map_err(|e| self.auth.transport_error(e))?.ok_or_else(|| {
            Error::bad_gateway(format!("{} sent a {what} larger than the limit of {limit} bytes", self.auth.label()))
        })
    }

    /// Maps a non-success answer onto the error table.
    async fn status_error(&self, mut resp: Response, target: Target<'_>) -> Error {
        let status = resp.status().as_u16();
        tracing::debug!(upstream = %self.auth.host(), status, "upstream error answer");
        let label = self.auth.label();
        let name = match &target {
            Target::Manifest(n, _) | Target::Blob(n, _) | Target::Repository(n) => *n,
        };
        match status {
            404 => {
                let errors = registry_errors(&mut resp).await;
                if errors.iter().any(|e| e.code == "NAME_UNKNOWN") {
                    return Error::new(ErrorCode::NameUnknown, format!("repository {name} is unknown to {label}"));
                }
                match target {
                    Target::Manifest(n, Reference::Digest(d)) => {
                        Error::manifest_unknown(format!("manifest {n}@{d} is unknown to {label}"))
                    }
                    Target::Manifest(n, Reference::Tag(t)) => {
                        Error::manifest_unknown(format!("manifest {n}:{t} is unknown to {label}"))
                    }
                    Target::Blob(n, d) => {
                        Error::new(ErrorCode::BlobUnknown, format!("blob {d} of {n} is unknown to {label}"))
                    }
                    Target::Repository(n) => {
                        Error::new(ErrorCode::NameUnknown, format!("repository {n} is unknown to {label}"))
                    }
                }
            }
            401 | 403 => Error::denied(format!("{label} denied pulling {name} (HTTP {status})")),
            429 => {
                let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let e = Error::new(ErrorCode::TooManyRequests, format!("{label} is rate limiting (HTTP 429)"));
                match retry {
                    Some(r) => e.with_detail(serde_json::json!({ "retryAfter": r })),
                    None => e,
                }
            }
            s if s >= 500 => Error::unavailable(format!("{label} answered HTTP {s}")),
            s => Error::bad_gateway(format!("{label} answered unexpected HTTP {s}")),
        }
    }

    fn header_digest(&self, headers: &HeaderMap) -> Result<Option<Digest>> {
        let Some(v) = headers.get(DOCKER_CONTENT_DIGEST) else {
            return Ok(None);
        };
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<Digest>().ok())
            .map(Some)
            .ok_or_else(|| Error::bad_gateway(format!("{} sent an invalid Docker-Content-Digest", self.auth.label())))
    }

    fn check_media_type(&self, media_type: &str) -> Result<()> {
        if media_type.starts_with("text/html") {
            return Err(Error::bad_gateway(format!(
                "{} answered with an HTML page, not a manifest",
                self.auth.label()
            )));
        }
        Ok(())
    }

    async fn fetch_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &HeaderValue,
    ) -> Result<Manifest> {
        let name = self.upstream_name(repository);
        let url = self.api_url(&name, "manifests", reference.as_str())?;
        let mut resp = self.send(Method::GET, &url, Some(accept), Self::scope(&name)).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.unexpected(resp, Target::Manifest(&name, reference)).await);
        }
        let header_digest = self.header_digest(resp.headers())?;
        let content_type = media_type(resp.headers());
        let bytes = self.read_limited(&mut resp, self.max_manifest_bytes, "manifest").await?;

        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
            Error::bad_gateway(format!("{} sent a manifest for {name} that is not JSON", self.auth.label()))
        })?;
        if !json.is_object() {
            return Err(Error::bad_gateway(format!(
                "{} sent a manifest for {name} that is not a JSON object",
                self.auth.label()
            )));
        }
        let digest = match reference {
            Reference::Digest(wanted) => {
                if !wanted.verifies(&bytes) {
                    return Err(Error::bad_gateway(format!(
                        "{} sent bytes for {name}@{wanted} that hash to {}",
                        self.auth.label(),
                        Digest::sha256_of(&bytes)
                    )));
                }
                wanted.clone()
            }
            Reference::Tag(tag) => {
                if let Some(h) = &header_digest
                    && !h.verifies(&bytes)
                {
                    return Err(Error::bad_gateway(format!(
                        "{} announced {h} for {name}:{tag} but sent bytes that hash to {}",
                        self.auth.label(),
                        Digest::sha256_of(&bytes)
                    )));
                }
                Digest::sha256_of(&bytes)
            }
        };
        // A generic Content-Type says less than the manifest's own mediaType field.
        let body_type = json.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned);
        let media_type = match content_type {
            Some(ct) if !matches!(ct.as_str(), "application/json" | "text/plain" | "application/octet-stream") => ct,
            ct => body_type.or(ct).ok_or_else(|| {
                Error::bad_gateway(format!("{} sent a manifest for {name} without a media type", self.auth.label()))
            })?,
        };
        self.check_media_type(&media_type)?;
        Ok(Manifest { digest, media_type, bytes })
    }

    /// GETs a small JSON document of the registry API (tag list, referrers index) and decodes it as `T`.
    async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        name: &RepositoryName,
        what: &str,
        mut resp: Response,
    ) -> Result<(T, HeaderMap)> {
        if resp.status() != StatusCode::OK {
            return Err(self.unexpected(resp, Target::Repository(name)).await);
        }
        let headers = resp.headers().clone();
        let body = self.read_limited(&mut resp, self.max_manifest_bytes, what).await?;
        let value = serde_json::from_slice(&body).map_err(|e| {
            Error::bad_gateway(format!("{} sent a {what} for {name} that is not valid: {e}", self.auth.label()))
        })?;
        tracing::debug!(upstream = %self.auth.host(), url = %url, what, "upstream JSON answer");
        Ok((value, headers))
    }

    /// A non-200 answer as an error; a redirect of a manifest is not a registry answer.
    async fn unexpected(&self, resp: Response, target: Target<'_>) -> Error {
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Error::bad_gateway(format!("{} answered unexpected HTTP {}", self.auth.label(), status.as_u16()));
        }
        self.status_error(resp, target).await
    }
}

/// The Content-Type without parameters, lowercased.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let mt = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    (!mt.is_empty()).then_some(mt)
}

/// The Accept header: every value the caller passed (or [`crate::ACCEPT_ALL`]), joined; values that cannot be in a
/// header are dropped.
fn accept_header(accept: &[String]) -> HeaderValue {
    let valid = |v: &&str| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b',');
    let mut values: Vec<&str> = accept.iter().map(|s| s.trim()).filter(valid).collect();
    if values.is_empty() {
        values = crate::ACCEPT_ALL.to_vec();
    }
    HeaderValue::from_str(&values.join(", ")).unwrap_or_else(|_| HeaderValue::from_static("*/*"))
}

#[async_trait]
impl Upstream for RegistryClient {
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead> {
        let accept = accept_header(accept);
        let name = self.upstream_name(repository);
        let url = self.api_url(&name, "manifests", reference.as_str())?;
        let resp = self.send(Method::HEAD, &url, Some(&accept), Self::scope(&name)).await?;
        let status = resp.status();
        // Some registries do not implement HEAD: ask with GET instead.
        if status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::NOT_IMPLEMENTED {
            if status != StatusCode::OK {
                return Err(self.unexpected(resp, Target::Manifest(&name, reference)).await);
            }
            let digest = self.header_digest(resp.headers())?;
            if let (Reference::Digest(wanted), Some(got)) = (reference, &digest)
                && wanted != got
            {
                return Err(Error::bad_gateway(format!("{} answered {got} for {name}@{wanted}", self.auth.label())));
            }
            let media_type = media_type(resp.headers());
            let size = content_length(resp.headers());
            if let (Some(digest), Some(media_type), Some(size)) = (digest, media_type, size) {
                self.check_media_type(&media_type)?;
                return Ok(ManifestHead { digest, media_type, size });
            }
            tracing::debug!(upstream = %self.auth.host(), "HEAD lacked digest, type or size; falling back to GET");
        }
        let m = self.fetch_manifest(repository, reference, &accept).await?;
        Ok(ManifestHead { digest: m.digest, media_type: m.media_type, size: m.bytes.len() as u64 })
    }

    async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        self.fetch_manifest(repository, reference, &accept_header(accept)).await
    }

    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        let name = self.upstream_name(repository);
        let url = self.api_url(&name, "blobs", digest.as_str())?;
        // GET, not HEAD: registries redirect GETs to storage; the body of a 200 is dropped unread.
        let resp = self.send(Method::GET, &url, None, Self::scope(&name)).await?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                Error::bad_gateway(format!("{} redirected a blob without a Location", self.auth.label()))
            })?;
            let target = url.join(location).map_err(|_| {
                Error::bad_gateway(format!("{} redirected a blob to an invalid Location", self.auth.label()))
            })?;
            if !matches!(target.scheme(), "http" | "https") {
                return Err(Error::bad_gateway(format!(
                    "{} redirected a blob to a {} URL",
                    self.auth.label(),
                    target.scheme()
                )));
            }
            return Ok(BlobLocation { url: target.into() });
        }
        if status == StatusCode::OK {
            drop(resp);
            return Ok(BlobLocation { url: url.into() });
        }
        Err(self.unexpected(resp, Target::Blob(&name, digest)).await)
    }

    async fn small_blob(&self, repository: &RepositoryName, digest: &Digest, max_bytes: usize) -> Result<Bytes> {
        /// Redirects followed at most: registry → storage is one; a CDN in front of storage may add one more.
        const MAX_HOPS: usize = 3;
        let name = self.upstream_name(repository);
        let url = self.api_url(&name, "blobs", digest.as_str())?;
        let mut resp = self.send(Method::GET, &url, None, Self::scope(&name)).await?;
        let mut at = url.clone();
        for _ in 0..MAX_HOPS {
            if !resp.status().is_redirection() {
                break;
            }
            let target = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|location| at.join(location).ok())
                .filter(|t| matches!(t.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    Error::bad_gateway(format!(
                        "{} redirected a blob to a missing or unusable Location",
                        self.auth.label()
                    ))
                })?;
            // The storage URL is presigned (or public): sent without the registry's credentials, as clients do.
            tracing::debug!(upstream = %self.auth.host(), "following a blob redirect to storage");
            resp = self.http()?.get(target.clone()).send().await.map_err(|e| self.auth.transport_error(e))?;
            at = target;
        }
        if resp.status() != StatusCode::OK {
            if resp.status().is_redirection() {
                return Err(Error::bad_gateway(format!(
                    "{} redirected a blob more than {MAX_HOPS} times",
                    self.auth.label()
                )));
            }
            return Err(self.unexpected(resp, Target::Blob(&name, digest)).await);
        }
        let bytes = self.read_limited(&mut resp, max_bytes, "blob").await?;
        if !digest.verifies(&bytes) {
            return Err(Error::bad_gateway(format!("{} sent a blob that does not match {digest}", self.auth.label())));
        }
        Ok(bytes)
    }

    async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        #[derive(Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let name = self.upstream_name(repository);
        let mut url = self.api_url(&name, "tags", "list")?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(n) = n {
                query.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                query.append_pair("last", last);
            }
        }
        let resp = self.send(Method::GET, &url, None, Self::scope(&name)).await?;
        let (list, headers): (TagList, _) = self.fetch_json(&url, &name, "tag list", resp).await?;
        let tags = list.tags.unwrap_or_default();
        let next_last = next_link_last(&headers).map(|from_link| from_link.or_else(|| tags.last().cloned()));
        Ok(TagPage { next_last: next_last.flatten(), tags })
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        #[derive(Deserialize)]
        struct ReferrersIndex {
            #[serde(default)]
            manifests: Vec<serde_json::Value>,
        }
        let name = self.upstream_name(repository);
        let mut url = self.api_url(&name, "referrers", digest.as_str())?;
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        let accept = HeaderValue::from_static(metahub_core::filter::OCI_INDEX);
        let resp = self.send(Method::GET, &url, Some(&accept), Self::scope(&name)).await?;
        // A registry with the referrers API never answers 404 (spec); one without it does.
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let (index, headers): (ReferrersIndex, _) = self.fetch_json(&url, &name, "referrers index", resp).await?;
        let applied = headers
            .get_all(OCI_FILTERS_APPLIED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|f| f.trim() == "artifactType");
        Ok(Some(Referrers { manifests: index.manifests, artifact_type_filtered: applied }))
    }

    fn canonical_name(&self, name: &RepositoryName) -> RepositoryName {
        self.upstream_name(name)
    }
}

/// The `Link: <…>; rel="next"` of a tag list: `None` without one; `Some(last)` with the `last` its URL names (when it
/// names one: some registries page by other means, then the page's last tag is used).
fn next_link_last(headers: &HeaderMap) -> Option<Option<String>> {
    headers.get_all(reqwest::header::LINK).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(
        |link| {
            let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
            let next = params.split(';').any(|p| p.replace([' ', '"'], "").eq_ignore_ascii_case("rel=next"));
            if !next {
                return None;
            }
            let url = Url::parse("http://upstream.invalid/").ok()?.join(target).ok()?;
            Some(url.query_pairs().find(|(k, _)| k == "last").map(|(_, v)| v.into_owned()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str, hub: bool) -> RegistryClient {
        let cfg = UpstreamConfig { docker_hub: hub, ..UpstreamConfig::from_url(url).unwrap() };
        RegistryClient::new(&cfg, &ClientOptions::default()).unwrap()
    }

    #[test]
    fn urls_are_base_plus_validated_parts() {
        let c = client("http://127.0.0.1:5001", false);
        let n: RepositoryName = "org/img".parse().unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            c.api_url(&n, "manifests", &d).unwrap().as_str(),
            format!("http://127.0.0.1:5001/v2/org/img/manifests/{d}")
        );
        let hub = client("https://registry-1.docker.io", false);
        let n: RepositoryName = "ubuntu".parse().unwrap();
        assert_eq!(hub.upstream_name(&n).as_str(), "library/ubuntu");
        let n: RepositoryName = "org/x".parse().unwrap();
        assert_eq!(hub.upstream_name(&n).as_str(), "org/x");
        assert_eq!(c.upstream_name(&"ubuntu".parse().unwrap()).as_str(), "ubuntu");
    }

    #[test]
    fn messages_name_the_prefix_never_the_host() {
        let default = client("http://127.0.0.1:5001", false);
        assert_eq!(default.auth.label(), "the default upstream");
        let cfg = UpstreamConfig::parse_spec("ghcr.io=http://10.1.2.3:5000").unwrap();
        let prefixed = RegistryClient::new(&cfg, &ClientOptions::default()).unwrap();
        assert_eq!(prefixed.auth.label(), "upstream ghcr.io");
        assert_eq!(prefixed.auth.host(), "10.1.2.3:5000", "the logs still name the host");
    }

    #[test]
    fn accept_is_joined_and_sanitized() {
        let v = accept_header(&["a/b".into(), "bad\nvalue".into(), "c/d".into()]);
        assert_eq!(v.to_str().unwrap(), "a/b, c/d");
        assert_eq!(accept_header(&[]).to_str().unwrap(), crate::ACCEPT_ALL.join(", "));
    }

    #[test]
    fn next_links() {
        let mut h = HeaderMap::new();
        assert_eq!(next_link_last(&h), None);
        h.insert(reqwest::header::LINK, HeaderValue::from_static("</v2/a/tags/list?last=v%201&n=2>; rel=\"next\""));
        assert_eq!(next_link_last(&h), Some(Some("v 1".to_owned())));
        h.insert(reqwest::header::LINK, HeaderValue::from_static("<https://x/v2/a/tags/list?page=2>; rel=next"));
        assert_eq!(next_link_last(&h), Some(None));
        h.insert(reqwest::header::LINK, HeaderValue::from_static("</x>; rel=\"prev\""));
        assert_eq!(next_link_last(&h), None);
    }

    #[test]
    fn debug_has_no_secrets() {
        let cfg = UpstreamConfig::from_url("http://h").unwrap().with_credentials("u", "hunter2");
        let c = RegistryClient::new(&cfg, &ClientOptions::default()).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
