//! Credentials per upstream, in the shape of Docker's `config.json` (what `docker login` writes, what a Kubernetes
//! `dockerconfigjson` secret holds): `{"auths": {"<key>": {"auth": base64("user:password")}}}` or
//! `{"username", "password"}` instead of `auth`. A key is an upstream's PREFIX or its registry host (`ghcr.io`,
//! `127.0.0.1:5001`, Docker Hub's `https://index.docker.io/v1/`). They come from a file, the environment or SSM;
//! never from the command line (it shows in `ps`).

use crate::config::UpstreamConfig;
use base64::Engine;
use metahub_core::{Error, Result, Secret};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;

/// A registry login. Debug never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret<String>,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { username: username.into(), password: Secret::new(password.into()) }
    }
}

/// Logins keyed by upstream PREFIX or registry host. Debug shows the keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamCredentials {
    by_key: HashMap<String, Credentials>,
}

impl fmt::Debug for UpstreamCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.by_key.keys().collect();
        keys.sort();
        f.debug_struct("UpstreamCredentials").field("keys", &keys).finish()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl UpstreamCredentials {
    /// Parses a Docker `config.json`-shaped document. Errors name the key at fault, never a secret.
    pub fn parse(json: &str) -> Result<Self> {
        let file: ConfigFile = serde_json::from_str(json).map_err(|e| {
            // serde's message quotes at most a token of the input; give only the position.
            Error::internal(format!(
                "upstream credentials are not {{\"auths\": {{...}}}} JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut by_key = HashMap::new();
        for (key, entry) in file.auths {
            let bad =
                || Error::internal(format!("upstream credentials for {key:?}: give auth, or username and password"));
            let login = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
                    let text = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (u, p) = text.split_once(':').ok_or_else(bad)?;
                    Credentials::new(u, p)
                }
                (None, Some(username), Some(password)) => Credentials::new(username, password),
                _ => return Err(bad()),
            };
            if login.username.is_empty() || login.password.expose_str().is_empty() {
                return Err(bad());
            }
            by_key.insert(normalize_key(&key), login);
        }
        Ok(UpstreamCredentials { by_key })
    }

    /// One login for the default upstream (`""`), as `METAHUB_UPSTREAM_USERNAME`/`_PASSWORD` or an SSM
    /// `username:password` give it.
    pub fn for_default(username: impl Into<String>, password: impl Into<String>) -> Self {
        let login = Credentials::new(username, password);
        UpstreamCredentials { by_key: HashMap::from([(String::new(), login)]) }
    }

    /// Adds `other`'s logins; `other` wins on a key both have.
    pub fn merge(mut self, other: UpstreamCredentials) -> Self {
        self.by_key.extend(other.by_key);
        self
    }

    /// Gives each upstream without credentials the login of its PREFIX, else of one of its hosts. Keys that match no
    /// upstream are reported, so that a typo does not silently pull anonymously.
    pub fn apply(&self, configs: &mut [UpstreamConfig]) -> Result<()> {
        let mut used = std::collections::HashSet::new();
        for config in configs.iter_mut() {
            let keys = std::iter::once(config.prefix.clone()).chain(config.hosts());
            let found = keys.filter(|k| !k.is_empty() || config.prefix.is_empty()).find_map(|k| {
                let k = normalize_key(&k);
                self.by_key.get(&k).map(|login| (k, login))
            });
            if let Some((key, login)) = found {
                used.insert(key);
                if config.username.is_none() {
                    config.username = Some(login.username.clone());
                    config.password = Some(login.password.clone());
                }
            }
        }
        let mut unused: Vec<&String> = self.by_key.keys().filter(|k| !used.contains(*k)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(Error::internal(format!(
            "upstream credentials for {unused:?} match no configured upstream (keys are an upstream's PREFIX or host)"
        )))
    }
}

/// `https://index.docker.io/v1/` (what `docker login` writes) → `index.docker.io`; hosts compare lowercase.
fn normalize_key(key: &str) -> String {
    let key = key.trim();
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    key.split('/').next().unwrap_or_default().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> Vec<UpstreamConfig> {
        ["https://registry-1.docker.io", "ghcr.io=https://ghcr.io", "local=http://127.0.0.1:5001"]
            .iter()
            .map(|s| UpstreamConfig::parse_spec(s).unwrap())
            .collect()
    }

    #[test]
    fn keys_are_prefixes_or_hosts() {
        let json = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnNlY3JldA=="},
            "ghcr.io": {"username": "gh", "password": "ghsecret"},
            "127.0.0.1:5001": {"username": "lo", "password": "losecret"}}}"#;
        let creds = UpstreamCredentials::parse(json).unwrap();
        let mut cfgs = configs();
        creds.apply(&mut cfgs).unwrap();
        let users: Vec<_> = cfgs.iter().map(|c| c.username.as_deref().unwrap_or("")).collect();
        assert_eq!(users, ["hub", "gh", "lo"]);
        assert_eq!(cfgs[0].password.as_ref().map(Secret::expose_str), Some("hubsecret"));
        assert!(!format!("{creds:?}").contains("secret"));
    }

    #[test]
    fn default_login_and_unused_keys() {
        let mut cfgs = configs();
        UpstreamCredentials::for_default("u", "p").apply(&mut cfgs).unwrap();
        assert_eq!(cfgs[0].username.as_deref(), Some("u"));
        assert_eq!(cfgs[1].username, None);
        let typo = UpstreamCredentials::parse(r#"{"auths": {"ghrc.io": {"username": "a", "password": "b"}}}"#).unwrap();
        let e = typo.apply(&mut configs()).unwrap_err();
        assert!(e.message.contains("ghrc.io"), "{e}");
    }

    #[test]
    fn bad_documents_never_echo_secrets() {
        for bad in [
            r#"{"auths": {"h": {"auth": "not base64 hunter2"}}}"#,
            r#"{"auths": {"h": {"username": "only"}}}"#,
            r#"{"auths": {"h": {"auth": "aHVudGVyMg=="}}}"#,
            "hunter2",
        ] {
            let e = UpstreamCredentials::parse(bad).unwrap_err();
            assert!(!e.message.contains("hunter2"), "{e}");
        }
    }
}
