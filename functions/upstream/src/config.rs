//! Upstream configuration: which registries exist, under which name prefix, with which credentials.

use crate::auth::Credentials;
use metahub_core::{Error, Result, Secret};
use reqwest::Url;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// The upstream when none is configured: Docker Hub.
pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";

/// Hosts that are Docker Hub: one-segment names get `library/` there.
const DOCKER_HUB_HOSTS: &[&str] = &["registry-1.docker.io", "docker.io", "index.docker.io"];

/// One upstream registry and the name prefix routed to it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Names starting with `prefix/` go to this upstream, with the prefix removed; `""` is the default route.
    #[serde(default)]
    pub prefix: String,
    /// Base URL: scheme, host and optional port only (`https://registry-1.docker.io`, `http://127.0.0.1:5001`).
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Adds `library/` to one-segment names; also on automatically for Docker Hub's hosts.
    #[serde(default)]
    pub docker_hub: bool,
    /// A token realm on another origin that this upstream may send us to (`https://gitlab.example/jwt/auth` for
    /// `registry.gitlab.example`); its own origin is always allowed, and Docker Hub's `auth.docker.io` for Docker Hub.
    #[serde(default)]
    pub token_realm: Option<String>,
}

impl UpstreamConfig {
    /// The default route to the registry at `url`, as the CLI's `--upstream URL` gives it.
    pub fn from_url(url: &str) -> Result<Self> {
        let base = parse_base_url(url)?;
        Ok(UpstreamConfig {
            prefix: String::new(),
            url: base.as_str().trim_end_matches('/').to_owned(),
            username: None,
            password: None,
            docker_hub: is_docker_hub_host(&base),
            token_realm: None,
        })
    }

    /// The login to send, when both halves are configured.
    pub fn credentials(&self) -> Option<Credentials> {
        match (&self.username, &self.password) {
            (Some(username), Some(password)) => {
                Some(Credentials { username: username.clone(), password: password.clone() })
            }
            _ => None,
        }
    }

    /// Credentials for the upstream, builder style.
    pub fn with_credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(Secret::new(password.into()));
        self
    }

    /// One `--upstream` value: `[PREFIX=]URL`. PREFIX is a first name segment, by convention the registry's host
    /// (`ghcr.io=https://ghcr.io`); without it, the default route.
    pub fn parse_spec(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        match spec.split_once('=') {
            // A URL carries no '=' before its scheme: anything before "://" is a prefix.
            Some((prefix, url)) if !prefix.contains("://") => {
                if prefix.is_empty() {
                    return Err(Error::internal(format!("upstream {spec:?}: empty PREFIX before '='")));
                }
                Ok(Self::from_url(url)?.with_prefix(prefix))
            }
            _ => Self::from_url(spec),
        }
    }

    /// The entries of an upstream list (`METAHUB_UPSTREAM`, each `--upstream`): [`parse_spec`](Self::parse_spec) values
    /// separated by commas or whitespace, read alike by `metahub serve` and the Lambda functions.
    pub fn list_entries(list: &str) -> impl Iterator<Item = &str> {
        list.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty())
    }

    /// The registry hosts this upstream answers for, as `ns` names them (`host[:port]`; Docker Hub's aliases).
    pub fn hosts(&self) -> Vec<String> {
        let Ok(base) = parse_base_url(&self.url) else { return Vec::new() };
        if is_docker_hub_host(&base) {
            return DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()).collect();
        }
        let host = base.host_str().unwrap_or_default();
        match base.port() {
            Some(port) => vec![format!("{host}:{port}")],
            None => vec![host.to_owned()],
        }
    }

    /// This upstream under `prefix/`, builder style.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

pub(crate) fn is_docker_hub_host(url: &Url) -> bool {
    url.host_str().is_some_and(|h| DOCKER_HUB_HOSTS.contains(&h))
}

/// Parses and checks a base URL: http(s), a host, no userinfo, no path, query or fragment.
pub(crate) fn parse_base_url(url: &str) -> Result<Url> {
    let invalid = |why: &str| Error::internal(format!("invalid upstream URL {:?}: {why}", truncate(url)));
    let parsed = Url::parse(url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Echoing the URL would echo the password: say only what is wrong.
        return Err(Error::internal(
            "invalid upstream URL: credentials in the URL are not accepted; configure username and password instead",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("a host is required"));
    }
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(invalid("a path is not accepted; give scheme, host and port only"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a query or fragment is not accepted"));
    }
    let mut parsed = parsed;
    // docker.io and index.docker.io do not serve the registry API themselves.
    if matches!(parsed.host_str(), Some("docker.io" | "index.docker.io")) {
        parsed.set_host(Some("registry-1.docker.io")).map_err(|e| invalid(&e.to_string()))?;
    }
    Ok(parsed)
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

/// HTTP behaviour shared by every upstream client.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClientOptions {
    /// Whole-request timeout (seconds in configuration files).
    #[serde(deserialize_with = "seconds")]
    pub timeout: Duration,
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// Manifests (and token answers) larger than this are refused without being read whole.
    pub max_manifest_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: metahub_core::settings::DEFAULT_UPSTREAM_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            max_manifest_bytes: 4 * 1024 * 1024,
        }
    }
}

impl ClientOptions {
    /// The defaults with a whole-request timeout of `timeout`, which also bounds the connect timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        let defaults = ClientOptions::default();
        ClientOptions { timeout, connect_timeout: defaults.connect_timeout.min(timeout), ..defaults }
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_accepts_bases() {
        let c = UpstreamConfig::from_url("https://registry-1.docker.io").unwrap();
        assert_eq!(c.url, "https://registry-1.docker.io");
        assert!(c.docker_hub);
        assert_eq!(c.prefix, "");
        let c = UpstreamConfig::from_url("http://127.0.0.1:5001/").unwrap();
        assert_eq!(c.url, "http://127.0.0.1:5001");
        assert!(!c.docker_hub);
        let c = UpstreamConfig::from_url("https://docker.io").unwrap();
        assert_eq!(c.url, "https://registry-1.docker.io");
        assert!(c.docker_hub);
    }

    #[test]
    fn from_url_refuses_others() {
        for bad in [
            "ftp://x",
            "file:///etc/passwd",
            "http://u:secret@host",
            "http://host/path",
            "http://host?q=1",
            "http://host/#f",
            "127.0.0.1:5000",
            "",
        ] {
            let e = UpstreamConfig::from_url(bad).unwrap_err();
            assert!(!e.message.contains("secret"), "{e}");
        }
    }

    #[test]
    fn specs_with_and_without_prefix() {
        let c = UpstreamConfig::parse_spec("ghcr.io=https://ghcr.io").unwrap();
        assert_eq!((c.prefix.as_str(), c.url.as_str()), ("ghcr.io", "https://ghcr.io"));
        assert_eq!(c.hosts(), ["ghcr.io"]);
        let c = UpstreamConfig::parse_spec("http://127.0.0.1:5001").unwrap();
        assert_eq!((c.prefix.as_str(), c.url.as_str()), ("", "http://127.0.0.1:5001"));
        assert_eq!(c.hosts(), ["127.0.0.1:5001"]);
        let c = UpstreamConfig::parse_spec("docker.io=https://docker.io").unwrap();
        assert!(c.docker_hub && c.hosts().contains(&"docker.io".to_owned()));
        assert!(UpstreamConfig::parse_spec("=http://h").is_err());
        assert!(UpstreamConfig::parse_spec("p=ftp://h").is_err());
    }

    #[test]
    fn debug_redacts_password() {
        let c = UpstreamConfig::from_url("http://h").unwrap().with_credentials("u", "hunter2");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn deserializes() {
        let c: UpstreamConfig =
            serde_json::from_str(r#"{"prefix":"hub","url":"https://registry-1.docker.io","password":"p"}"#).unwrap();
        assert_eq!(c.prefix, "hub");
        let o: ClientOptions = serde_json::from_str(r#"{"timeout":2.5}"#).unwrap();
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.max_manifest_bytes, 4 * 1024 * 1024);
    }
}
