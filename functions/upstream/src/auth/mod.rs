//! Upstream authentication in one place, for the pull client ([`crate::RegistryClient`]) and the push client
//! (`metahub-publish`): the credentials ([`credentials`]), `WWW-Authenticate` parsing ([`challenge`]), the token
//! realm allow-list ([`realm`]), the token cache by (upstream, scope) ([`tokens`]), and the loop that ties them:
//! send, answer a 401's challenge (a token, or Basic), retry once ([`UpstreamAuth::send`]).
//!
//! Credentials and tokens are [`Secret`]s: no `Debug` and no log line shows them. Client-facing messages name the
//! upstream by its label (`upstream ghcr.io`, `the default upstream`), never by a host; hosts go to the logs only.

pub mod challenge;
mod credentials;
mod realm;
mod tokens;

pub use challenge::Challenge;
pub use credentials::{Credentials, UpstreamCredentials};
pub use realm::{RealmPolicy, RealmRefusal};
pub use tokens::{TokenAnswer, TokenCache};

use crate::body::read_limited;
use crate::config::{UpstreamConfig, is_docker_hub_host, parse_base_url};
use metahub_core::{Error, ErrorCode, Result, Secret};
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

/// Docker Hub's token service lives on its own host: the one realm configured for Docker Hub upstreams.
const DOCKER_HUB_REALM: &str = "https://auth.docker.io";
/// Token answers are small; never read more than this of one.
const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;

/// What a request authenticates with.
enum Auth {
    None,
    Basic,
    Bearer(Secret<String>),
}

/// How requests to one upstream authenticate: its credentials, the realms it may send us to, the tokens it gave.
#[derive(Debug)]
pub struct UpstreamAuth {
    /// The upstream's origin (`http://127.0.0.1:5001`): the token cache's key, with the scope.
    upstream: String,
    label: String,
    /// `host[:port]`, for the logs only.
    host: String,
    credentials: Option<Credentials>,
    realms: RealmPolicy,
    tokens: TokenCache,
    /// The upstream asked for Basic once: send the credentials up front from then on.
    basic_challenged: AtomicBool,
}

impl UpstreamAuth {
    pub fn new(config: &UpstreamConfig) -> Result<Self> {
        let base = parse_base_url(&config.url)?;
        let host = match (base.host_str().unwrap_or_default(), base.port()) {
            (host, Some(p)) => format!("{host}:{p}"),
            (host, None) => host.to_owned(),
        };
        let label = if config.prefix.is_empty() {
            "the default upstream".to_owned()
        } else {
            format!("upstream {}", config.prefix)
        };
        let credentials = config.credentials();
        if credentials.is_none() && (config.username.is_some() || config.password.is_some()) {
            return Err(Error::internal(format!("{label}: give both username and password, or neither")));
        }
        let mut configured = Vec::new();
        if config.docker_hub || is_docker_hub_host(&base) {
            configured.push(Url::parse(DOCKER_HUB_REALM).map_err(|e| Error::internal(e.to_string()))?);
        }
        if let Some(realm) = &config.token_realm {
            let invalid =
                || Error::internal(format!("{label}: the token realm must be an http(s) URL without userinfo"));
            let url = Url::parse(realm.trim()).map_err(|_| invalid())?;
            if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
                return Err(invalid());
            }
            configured.push(url);
        }
        Ok(UpstreamAuth {
            upstream: base.origin().ascii_serialization(),
            label,
            host,
            credentials,
            realms: RealmPolicy::new(base, configured),
            tokens: TokenCache::default(),
            basic_challenged: AtomicBool::new(false),
        })
    }

    /// How client-facing messages name the upstream: `upstream PREFIX` (what the client typed) or `the default
    /// upstream`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `host[:port]` of the upstream: for the logs only, never for client-facing messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends `build()`'s request; on a 401 answers the challenge (a token for `scopes`, fetched with `token_http`, or
    /// Basic) and retries once. A second 401 is returned to the caller, which maps it to DENIED. `token_http` must not
    /// follow redirects: the token request carries the credentials.
    pub async fn send(
        &self,
        token_http: &reqwest::Client,
        scopes: &[String],
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response> {
        let scope = scopes.join(" ");
        let mut auth = self.initial_auth(&scope);
        for attempt in 0..2 {
            let request = match (&auth, &self.credentials) {
                (Auth::Bearer(token), _) => build().bearer_auth(token.expose_str()),
                (Auth::Basic, Some(c)) => build().basic_auth(&c.username, Some(c.password.expose_str())),
                _ => build(),
            };
            let resp = request.send().await.map_err(|e| self.transport_error(e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenges = challenges(resp.headers());
            if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
                let realm = bearer.param("realm").ok_or_else(|| {
                    Error::bad_gateway(format!("{} sent a Bearer challenge without a realm", self.label))
                })?;
                self.tokens.forget(&self.upstream, &scope);
                let token = self.fetch_token(token_http, realm, bearer.param("service"), scopes, &scope).await?;
                auth = Auth::Bearer(token);
            } else if challenges.iter().any(|c| c.scheme == "basic") && self.credentials.is_some() {
                if matches!(auth, Auth::Basic) {
                    return Ok(resp); // the credentials were already refused
                }
                self.basic_challenged.store(true, Ordering::Relaxed);
                auth = Auth::Basic;
            } else {
                return Ok(resp);
            }
        }
        Err(Error::internal("unreachable: the retry loop always returns"))
    }

    fn initial_auth(&self, scope: &str) -> Auth {
        if let Some(token) = self.tokens.get(&self.upstream, scope, Instant::now()) {
            Auth::Bearer(token)
        } else if self.credentials.is_some() && self.basic_challenged.load(Ordering::Relaxed) {
            Auth::Basic
        } else {
            Auth::None
        }
    }

    /// The realm as a URL, if the allow-list takes it; the refusal's message names no host (the log does).
    fn check_realm(&self, realm: &str) -> Result<Url> {
        self.realms.check(realm).map_err(|why| {
            let origin = Url::parse(realm).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
            tracing::warn!(upstream = %self.host, realm = %origin, ?why, "token realm refused");
            let label = &self.label;
            Error::bad_gateway(match why {
                RealmRefusal::Invalid => format!("{label} sent an invalid token realm"),
                RealmRefusal::Scheme(s) => format!("{label} sent a token realm with scheme {s:?}; refused"),
                RealmRefusal::Elsewhere => {
                    format!("{label} sent a token realm that is not on its own host and port; refused")
                }
                RealmRefusal::Userinfo => format!("{label} sent a token realm with userinfo; refused"),
            })
        })
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        scope: &str,
    ) -> Result<Secret<String>> {
        let url = self.check_realm(realm)?;
        let realm_host = url.host_str().unwrap_or_default().to_owned();
        let query: Vec<(&str, &str)> =
            service.map(|s| ("service", s)).into_iter().chain(scopes.iter().map(|s| ("scope", s.as_str()))).collect();
        let mut req = http.get(url).query(&query);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, Some(c.password.expose_str()));
        }
        tracing::debug!(upstream = %self.host, realm = %realm_host, scope, "fetching upstream token");
        let mut resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let label = &self.label;
        if !resp.status().is_success() {
            let who = if self.credentials.is_some() { "the configured credentials" } else { "anonymous access" };
            return Err(match status {
                401 | 403 => Error::denied(format!("the token service of {label} refused {who} (HTTP {status})")),
                429 => Error::new(
                    ErrorCode::TooManyRequests,
                    format!("the token service of {label} is rate limiting (HTTP 429)"),
                ),
                s if s >= 500 => Error::unavailable(format!("the token service of {label} answered HTTP {s}")),
                s => Error::bad_gateway(format!("the token service of {label} answered unexpected HTTP {s}")),
            });
        }
        let body = read_limited(&mut resp, TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|e| self.transport_error(e))?
            .ok_or_else(|| Error::bad_gateway(format!("the token service of {label} sent an oversized answer")))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            Error::bad_gateway(format!("the token service of {label} sent an answer that is not token JSON"))
        })?;
        let token = answer.token().cloned().ok_or_else(|| {
            Error::bad_gateway(format!("the token service of {label} sent an empty or malformed token"))
        })?;
        let lifetime = answer.lifetime(SystemTime::now());
        self.tokens.insert(&self.upstream, scope, token.clone(), lifetime, Instant::now());
        Ok(token)
    }

    /// A failed exchange with the upstream, as one error of the table; the cause goes to the log with the host.
    pub fn transport_error(&self, e: reqwest::Error) -> Error {
        let e = e.without_url();
        let mut cause = String::new();
        let mut garbage = e.is_decode();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(h) = s.downcast_ref::<hyper::Error>() {
                garbage |= h.is_parse();
            }
            cause = s.to_string();
            source = s.source();
        }
        let cause = if cause.is_empty() { e.to_string() } else { cause };
        tracing::warn!(upstream = %self.host, error = %cause, timeout = e.is_timeout(), "upstream transport error");
        let label = &self.label;
        if e.is_timeout() {
            Error::unavailable(format!("{label} timed out"))
        } else if e.is_connect() {
            Error::unavailable(format!("cannot connect to {label}: {cause}"))
        } else if garbage {
            Error::bad_gateway(format!("{label} did not answer as an HTTP registry: {cause}"))
        } else {
            Error::unavailable(format!("{label} failed: {cause}"))
        }
    }
}

/// Every challenge of every `WWW-Authenticate` header of an answer.
fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).flat_map(challenge::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(spec: &str) -> UpstreamAuth {
        UpstreamAuth::new(&UpstreamConfig::parse_spec(spec).unwrap()).unwrap()
    }

    #[test]
    fn realms_are_the_upstreams_own_or_configured() {
        let local = auth("http://127.0.0.1:5001");
        assert!(local.check_realm("http://127.0.0.1:5001/token").is_ok());
        for bad in ["http://127.0.0.1:9999/token", "http://evil.example:5001/t", "file:///etc/passwd", "nonsense"] {
            let e = local.check_realm(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadGateway, "{bad}");
            assert!(!e.message.contains("evil") && !e.message.contains("127.0.0.1"), "no host: {e}");
        }
        let e = local.check_realm("http://evil.example:5001/t").unwrap_err();
        assert_eq!(e.message, "the default upstream sent a token realm that is not on its own host and port; refused");
        let hub = auth("https://registry-1.docker.io");
        assert!(hub.check_realm("https://auth.docker.io/token").is_ok(), "Docker Hub's realm, built in");
        assert!(hub.check_realm("https://auth.docker.io:8443/token").is_err());
        let mirror =
            UpstreamConfig { docker_hub: true, ..UpstreamConfig::parse_spec("hub=https://mirror.example").unwrap() };
        assert!(UpstreamAuth::new(&mirror).unwrap().check_realm("https://auth.docker.io/token").is_ok());
        assert!(local.check_realm("https://auth.docker.io/token").is_err(), "not for other upstreams");
        let mut gitlab = UpstreamConfig::parse_spec("gl=https://registry.gitlab.example").unwrap();
        gitlab.token_realm = Some("https://gitlab.example/jwt/auth".into());
        let gitlab = UpstreamAuth::new(&gitlab).unwrap();
        assert!(gitlab.check_realm("https://gitlab.example/jwt/auth").is_ok(), "an explicitly configured realm");
        let e = gitlab.check_realm("https://gitlab.example:8443/jwt/auth").unwrap_err();
        assert!(e.message.starts_with("upstream gl sent"), "{e}");
    }

    #[test]
    fn configured_realms_and_logins_are_checked() {
        for bad in ["ftp://h/t", "http://u:p@h/t", "not a url"] {
            let mut cfg = UpstreamConfig::parse_spec("http://127.0.0.1:5001").unwrap();
            cfg.token_realm = Some(bad.into());
            let e = UpstreamAuth::new(&cfg).unwrap_err();
            assert!(!e.message.contains("u:p"), "{e}");
        }
        let mut half = UpstreamConfig::parse_spec("http://127.0.0.1:5001").unwrap();
        half.username = Some("u".into());
        assert!(UpstreamAuth::new(&half).is_err());
    }

    #[test]
    fn labels_name_the_prefix_and_debug_has_no_secrets() {
        let cfg = UpstreamConfig::parse_spec("ghcr.io=http://10.1.2.3:5000").unwrap().with_credentials("u", "hunter2");
        let a = UpstreamAuth::new(&cfg).unwrap();
        assert_eq!((a.label(), a.host()), ("upstream ghcr.io", "10.1.2.3:5000"));
        let minute = std::time::Duration::from_secs(60);
        a.tokens.insert(&a.upstream, "s", Secret::new("tok-secret".into()), minute, Instant::now());
        let debug = format!("{a:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("tok-secret"), "{debug}");
        assert_eq!(auth("http://127.0.0.1:5001").label(), "the default upstream");
    }

    #[test]
    fn challenges_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, "bEaReR realm=\"http://h/t\"".parse().unwrap());
        h.append(WWW_AUTHENTICATE, "BASIC realm=r".parse().unwrap());
        let cs = challenges(&h);
        assert_eq!(cs.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(), ["bearer", "basic"]);
    }
}
