//! A small registry client for what publishing needs beyond reading manifests: blob HEAD/GET, cross-repository
//! mounts and manifest PUTs, with `pull,push` scopes (the upstream adapter asks for `pull` only). It authenticates
//! through the upstream crate's [`UpstreamAuth`], as the pull side does: the same realm allow-list and token cache.
//!
//! One client serves one publish run: it knows every scope the run needs up front and asks the token service for
//! all of them at once, so one token covers the target (`pull,push`) and every source repository (`pull`).

use bytes::Bytes;
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
pub use metahub_upstream::Credentials;
use metahub_upstream::{UpstreamAuth, UpstreamConfig, read_limited, registry_errors};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode, Url, redirect};
use std::fmt;
use std::time::Duration;

/// The push side of one registry.
pub struct PushClient {
    base: Url,
    docker_hub: bool,
    auth: UpstreamAuth,
    scopes: Vec<String>,
    /// Registry requests: blob GETs may redirect to storage (reqwest drops Authorization when a redirect leaves the
    /// host).
    http: reqwest::Client,
    /// Token requests, which carry the credentials: never redirected.
    token_http: reqwest::Client,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth)
            .field("scopes", &self.scopes)
            .finish()
    }
}

fn http_client(redirects: redirect::Policy) -> Result<reqwest::Client> {
    metahub_upstream::http_client_builder()
        .redirect(redirects)
        .timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("metahub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// What a run needs of one repository, for the token: `pull`, or `pull,push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    PullPush,
}

impl PushClient {
    /// A client for the registry at `url` (as `--upstream` gives it) whose tokens cover `access` (duplicates dropped).
    pub fn new(url: &str, credentials: Option<Credentials>, access: &[(RepositoryName, Access)]) -> Result<Self> {
        let mut config = UpstreamConfig::from_url(url)?;
        if let Some(c) = credentials {
            config.username = Some(c.username);
            config.password = Some(c.password);
        }
        let base = Url::parse(&config.url).map_err(|e| Error::internal(format!("invalid upstream URL: {e}")))?;
        let mut client = PushClient {
            base,
            docker_hub: config.docker_hub,
            auth: UpstreamAuth::new(&config)?,
            scopes: Vec::new(),
            http: http_client(redirect::Policy::limited(5))?,
            token_http: http_client(redirect::Policy::none())?,
        };
        for (name, a) in access {
            let actions = match a {
                Access::Pull => "pull",
                Access::PullPush => "pull,push",
            };
            let scope = format!("repository:{}:{actions}", client.registry_name(name));
            if !client.scopes.contains(&scope) {
                client.scopes.push(scope);
            }
        }
        Ok(client)
    }

    /// How messages name the registry (`the default upstream`): never by its host.
    pub fn label(&self) -> &str {
        self.auth.label()
    }

    /// The name as the registry knows it (Docker Hub's official images live under `library/`).
    pub fn registry_name(&self, name: &RepositoryName) -> RepositoryName {
        if self.docker_hub && name.segments() == 1 { name.with_prefix("library") } else { name.clone() }
    }

    fn url(&self, name: &RepositoryName, kind: &str, reference: Option<&str>) -> Result<Url> {
        let name = self.registry_name(name);
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| Error::internal(format!("{} has no usable base URL", self.label())))?;
            path.clear().push("v2").extend(name.as_str().split('/')).extend(kind.split('/'));
            match reference {
                Some(r) => path.push(r),
                None => path.push(""), // `uploads/` ends with a slash
            };
        }
        Ok(url)
    }

    /// Sends `build()`'s request through [`UpstreamAuth::send`]: a 401 gets a token for every scope of the run (or
    /// Basic), and one retry.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response> {
        self.auth.send(&self.token_http, &self.scopes, build).await
    }

    /// A non-success answer as one line, with the registry's own error message when it sent one.
    async fn status_error(&self, mut resp: Response, what: &str) -> Error {
        let status = resp.status().as_u16();
        let said = registry_errors(&mut resp)
            .await
            .first()
            .map(|e| format!(": {} {}", e.code, e.message().chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let code = match status {
            401 | 403 => ErrorCode::Denied,
            404 => ErrorCode::NotFound,
            400 => ErrorCode::ManifestInvalid,
            s if s >= 500 => ErrorCode::Unavailable,
            _ => ErrorCode::BadGateway,
        };
        Error::new(code, format!("{what}: {} answered HTTP {status}{said}", self.label()))
    }

    /// Whether `digest` is a blob of `name`.
    pub async fn blob_exists(&self, name: &RepositoryName, digest: &Digest) -> Result<bool> {
        let url = self.url(name, "blobs", Some(digest.as_str()))?;
        let resp = self.send(|| self.http.head(url.clone())).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(resp, &format!("checking blob {digest} in {name}")).await),
        }
    }

    /// A small blob (an image config), its digest verified, refused beyond `limit` bytes.
    pub async fn get_blob(&self, name: &RepositoryName, digest: &Digest, limit: usize) -> Result<Bytes> {
        let url = self.url(name, "blobs", Some(digest.as_str()))?;
        let mut resp = self.send(|| self.http.get(url.clone())).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &format!("reading blob {digest} of {name}")).await);
        }
        let bytes = read_limited(&mut resp, limit)
            .await
            .map_err(|e| self.auth.transport_error(e))?
            .ok_or_else(|| Error::bad_gateway(format!("blob {digest} of {name} is over the limit of {limit} bytes")))?;
        if !digest.verifies(&bytes) {
            return Err(Error::bad_gateway(format!("blob {digest} of {name} does not hash to its digest")));
        }
        Ok(bytes)
    }

    /// Mounts `digest` from repository `from` into `name` without copying it. `Ok(false)` when the registry would not
    /// mount it (it opened an upload instead, which is cancelled).
    pub async fn mount_blob(&self, name: &RepositoryName, digest: &Digest, from: &RepositoryName) -> Result<bool> {
        let mut url = self.url(name, "blobs/uploads", None)?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", self.registry_name(from).as_str());
        let resp = self.send(|| self.http.post(url.clone()).header("content-length", "0")).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Some(location) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok())
                    && let Ok(upload) = self.base.join(location)
                    && upload.host_str() == self.base.host_str()
                {
                    // Best effort: an abandoned upload expires on the registry anyway.
                    let _ = self.send(|| self.http.delete(upload.clone())).await;
                }
                Ok(false)
            }
            _ => Err(self.status_error(resp, &format!("mounting blob {digest} from {from} into {name}")).await),
        }
    }

    /// Whether manifest `digest` is in `name`.
    pub async fn manifest_exists(&self, name: &RepositoryName, digest: &Digest, media_type: &str) -> Result<bool> {
        let url = self.url(name, "manifests", Some(digest.as_str()))?;
        let resp = self.send(|| self.http.head(url.clone()).header("accept", media_type)).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(resp, &format!("checking manifest {digest} in {name}")).await),
        }
    }

    /// PUTs a manifest at `reference` (a tag or its digest); answers the digest the registry stored it under.
    pub async fn put_manifest(
        &self,
        name: &RepositoryName,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let url = self.url(name, "manifests", Some(reference))?;
        let body = Bytes::copy_from_slice(bytes);
        let resp = self.send(|| self.http.put(url.clone()).header(CONTENT_TYPE, media_type).body(body.clone())).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &format!("pushing manifest {name}:{reference}")).await);
        }
        let ours = Digest::sha256_of(bytes);
        match header_digest(resp.headers()) {
            Some(theirs) if theirs != ours => Err(Error::bad_gateway(format!(
                "{} stored manifest {name}:{reference} as {theirs}, but its bytes hash to {ours}",
                self.label()
            ))),
            _ => Ok(ours),
        }
    }
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_debug() {
        let c = PushClient::new(
            "http://127.0.0.1:5000",
            Some(Credentials::new("u", "hunter2")),
            &[("org/bench".parse().unwrap(), Access::PullPush), ("org/bench".parse().unwrap(), Access::PullPush)],
        )
        .unwrap();
        assert_eq!(c.scopes, ["repository:org/bench:pull,push"]);
        let name: RepositoryName = "org/bench".parse().unwrap();
        assert_eq!(
            c.url(&name, "blobs/uploads", None).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/org/bench/blobs/uploads/"
        );
        assert_eq!(
            c.url(&name, "manifests", Some("latest")).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/org/bench/manifests/latest"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let hub = PushClient::new("https://docker.io", None, &[("bench".parse().unwrap(), Access::Pull)]).unwrap();
        assert_eq!(hub.registry_name(&"bench".parse().unwrap()).as_str(), "library/bench");
        assert_eq!(hub.scopes, ["repository:library/bench:pull"]);
    }
}
