//! A small registry client for what publishing needs beyond reading manifests: blob HEAD/GET, cross-repository
//! mounts and manifest PUTs, with the token flow for `pull,push` scopes (the upstream adapter asks for `pull` only).
//!
//! One client serves one publish run: it knows every scope the run needs up front and asks the token service for
//! all of them at once, so one token covers the target (`pull,push`) and every source repository (`pull`).

use bytes::Bytes;
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, ErrorCode, Result};
pub use metahub_upstream::Credentials;
use metahub_upstream::UpstreamConfig;
use metahub_upstream::challenge::{self, Challenge};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url, redirect};
use serde::Deserialize;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

const SMALL_BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
enum Auth {
    None,
    Basic,
    Bearer(String),
}

/// The push side of one registry.
pub struct PushClient {
    base: Url,
    label: String,
    docker_hub: bool,
    credentials: Option<Credentials>,
    scopes: Vec<String>,
    http: reqwest::Client,
    auth: Mutex<Auth>,
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .field("scopes", &self.scopes)
            .finish()
    }
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
        let config = UpstreamConfig::from_url(url)?;
        let base = Url::parse(&config.url).map_err(|e| Error::internal(format!("invalid upstream URL: {e}")))?;
        let label = match base.port() {
            Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        // Blob GETs may redirect to storage; reqwest drops Authorization when a redirect leaves the host.
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::limited(5))
            .timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("metahub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        let mut client = PushClient {
            base,
            label,
            docker_hub: config.docker_hub,
            credentials,
            scopes: Vec::new(),
            http,
            auth: Mutex::new(Auth::None),
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

    /// `host[:port]` of the registry, for messages.
    pub fn label(&self) -> &str {
        &self.label
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
                .map_err(|()| Error::internal(format!("upstream {} has no usable base URL", self.label)))?;
            path.clear().push("v2").extend(name.as_str().split('/')).extend(kind.split('/'));
            match reference {
                Some(r) => path.push(r),
                None => path.push(""), // `uploads/` ends with a slash
            };
        }
        Ok(url)
    }

    /// Sends `build()`'s request; on a 401 answers the challenge (token for every scope, or Basic) and retries once.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response> {
        for attempt in 0..2 {
            let auth = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let req = match (&auth, &self.credentials) {
                (Auth::Bearer(t), _) => build().bearer_auth(t),
                (Auth::Basic, Some(c)) => build().basic_auth(&c.username, Some(c.password.expose_str())),
                _ => build(),
            };
            let resp = req.send().await.map_err(|e| self.transport_error(e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(challenge::parse)
                .collect();
            let next = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
                let realm = bearer.param("realm").ok_or_else(|| {
                    Error::bad_gateway(format!("upstream {} sent a Bearer challenge without a realm", self.label))
                })?;
                Auth::Bearer(self.fetch_token(realm, bearer.param("service")).await?)
            } else if challenges.iter().any(|c| c.scheme == "basic") && self.credentials.is_some() {
                Auth::Basic
            } else {
                return Ok(resp);
            };
            *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = next;
        }
        Err(Error::internal("unreachable: the retry loop always returns"))
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<String> {
        let url = Url::parse(realm)
            .map_err(|_| Error::bad_gateway(format!("upstream {} sent an invalid token realm", self.label)))?;
        // Never send credentials over plain HTTP to a realm when the registry itself is HTTPS.
        let downgrade = self.base.scheme() == "https" && url.scheme() != "https";
        if !matches!(url.scheme(), "http" | "https") || downgrade {
            return Err(Error::bad_gateway(format!(
                "upstream {} sent a token realm with scheme {:?}; refused",
                self.label,
                url.scheme()
            )));
        }
        let realm_host = url.host_str().unwrap_or_default().to_owned();
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in &self.scopes {
            query.push(("scope", s));
        }
        let mut req = self.http.get(url).query(&query);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(c.password.expose_str()));
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let who = if self.credentials.is_some() { "the given credentials" } else { "anonymous access" };
            return Err(match status {
                401 | 403 => Error::denied(format!(
                    "the token service of {} ({realm_host}) refused {who} (HTTP {status})",
                    self.label
                )),
                s => {
                    Error::unavailable(format!("the token service of {} ({realm_host}) answered HTTP {s}", self.label))
                }
            });
        }
        let body = read_limited(resp, SMALL_BODY_LIMIT).await.map_err(|e| self.transport_error(e))?.unwrap_or_default();
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            Error::bad_gateway(format!("the token service of {} sent an answer that is not token JSON", self.label))
        })?;
        let token = answer.token.filter(|t| !t.is_empty()).or(answer.access_token).unwrap_or_default();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::bad_gateway(format!(
                "the token service of {} sent an empty or malformed token",
                self.label
            )));
        }
        Ok(token)
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        let e = e.without_url();
        if e.is_timeout() {
            Error::unavailable(format!("upstream {} timed out", self.label))
        } else if e.is_connect() {
            Error::unavailable(format!("cannot connect to upstream {}", self.label))
        } else {
            Error::unavailable(format!("upstream {} failed: {e}", self.label))
        }
    }

    /// A non-success answer as one line, with the registry's own error message when it sent one.
    async fn status_error(&self, resp: Response, what: &str) -> Error {
        let status = resp.status().as_u16();
        let body = read_limited(resp, SMALL_BODY_LIMIT).await.ok().flatten().unwrap_or_default();
        #[derive(Deserialize)]
        struct Envelope {
            errors: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            code: String,
            #[serde(default)]
            message: String,
        }
        let said = serde_json::from_slice::<Envelope>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|i| format!(": {} {}", i.code, i.message.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        let code = match status {
            401 | 403 => ErrorCode::Denied,
            404 => ErrorCode::NotFound,
            400 => ErrorCode::ManifestInvalid,
            s if s >= 500 => ErrorCode::Unavailable,
            _ => ErrorCode::BadGateway,
        };
        Error::new(code, format!("{what}: upstream {} answered HTTP {status}{said}", self.label))
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
        let resp = self.send(|| self.http.get(url.clone())).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &format!("reading blob {digest} of {name}")).await);
        }
        let bytes = read_limited(resp, limit)
            .await
            .map_err(|e| self.transport_error(e))?
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
                "upstream {} stored manifest {name}:{reference} as {theirs}, but its bytes hash to {ours}",
                self.label
            ))),
            _ => Ok(ours),
        }
    }
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.trim().parse().ok()
}

/// The body, or `None` as soon as it grows over `limit` bytes (the rest is never read).
async fn read_limited(mut resp: Response, limit: usize) -> std::result::Result<Option<Bytes>, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let cs = challenge::parse(
            r#"Bearer realm="https://h/t?a=1,b=2",service="reg", scope="repository:x:pull,push", error="say \"hi\"", Basic realm="r""#,
        );
        assert_eq!(cs.len(), 2, "{cs:?}");
        assert_eq!(cs[0].scheme, "bearer");
        assert_eq!(cs[0].param("realm"), Some("https://h/t?a=1,b=2"));
        assert_eq!(cs[0].param("service"), Some("reg"));
        assert_eq!(cs[0].param("scope"), Some("repository:x:pull,push"));
        assert_eq!(cs[0].param("error"), Some(r#"say "hi""#));
        assert_eq!(cs[1].scheme, "basic");
        assert_eq!(cs[1].param("realm"), Some("r"));
        assert_eq!(challenge::parse("BASIC Realm=registry")[0].param("realm"), Some("registry"));
        for junk in ["", ",,,", "\"", "=", "Bearer realm=\"unterminated", "é ü = ,", "a=b"] {
            let _ = challenge::parse(junk);
        }
    }

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
