//! The token cache: bearer tokens keyed by (upstream, scope), each dropped shortly before the token service said it
//! expires. The lifetime is the answer's `expires_in` (60 s when absent, as the token spec says), counted from its
//! `issued_at` when that is already past (a token that spent time in transit, or a clock behind ours, expires sooner;
//! an `issued_at` ahead of our clock never lengthens a token's life).

use metahub_core::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Bounds the cache: repository names, and so scopes, come from clients.
const TOKEN_CACHE_MAX: usize = 4096;
/// The token spec's default lifetime, when the answer has no `expires_in`.
const DEFAULT_TOKEN_SECONDS: u64 = 60;
/// No token is kept longer than a day, whatever the answer says.
const MAX_TOKEN_SECONDS: u64 = 86_400;

/// A token service's answer (`token`, or OAuth2's `access_token`). Debug never shows the token.
#[derive(Deserialize)]
pub struct TokenAnswer {
    token: Option<Secret<String>>,
    access_token: Option<Secret<String>>,
    expires_in: Option<u64>,
    issued_at: Option<String>,
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer").field("expires_in", &self.expires_in).field("issued_at", &self.issued_at).finish()
    }
}

impl TokenAnswer {
    /// The token, if it is one that can go into an `Authorization` header (visible ASCII, not empty).
    pub fn token(&self) -> Option<&Secret<String>> {
        let token = self.token.as_ref().filter(|t| !t.expose_str().is_empty()).or(self.access_token.as_ref())?;
        let text = token.expose_str();
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
    }

    /// How long the token is valid from `now` (wall clock): `expires_in` (default 60 s, at most a day), less the time
    /// since `issued_at` when that is in the past.
    pub fn lifetime(&self, now: SystemTime) -> Duration {
        let life = Duration::from_secs(
            self.expires_in.filter(|s| *s > 0).unwrap_or(DEFAULT_TOKEN_SECONDS).min(MAX_TOKEN_SECONDS),
        );
        let issued = self.issued_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t.trim()).ok());
        let elapsed = issued.and_then(|at| now.duration_since(at).ok()).unwrap_or_default();
        life.saturating_sub(elapsed)
    }
}

struct CachedToken {
    token: Secret<String>,
    expires: Instant,
}

/// Bearer tokens by (upstream, scope). Debug shows the number of entries only.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").field("entries", &self.lock().len()).finish()
    }
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CachedToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token for `scope` at `upstream`, unless it has expired by `now`.
    pub fn get(&self, upstream: &str, scope: &str, now: Instant) -> Option<Secret<String>> {
        let key = (upstream.to_owned(), scope.to_owned());
        self.lock().get(&key).filter(|t| t.expires > now).map(|t| t.token.clone())
    }

    /// Keeps `token` for `lifetime` from `now`, less a margin (10 s, or a quarter of a short life) so that it is
    /// dropped before the upstream stops taking it.
    pub fn insert(&self, upstream: &str, scope: &str, token: Secret<String>, lifetime: Duration, now: Instant) {
        let margin = Duration::from_secs(10).min(lifetime / 4);
        let mut tokens = self.lock();
        if tokens.len() >= TOKEN_CACHE_MAX {
            tokens.retain(|_, t| t.expires > now);
            if tokens.len() >= TOKEN_CACHE_MAX {
                tokens.clear();
            }
        }
        let expires = now + lifetime - margin;
        tokens.insert((upstream.to_owned(), scope.to_owned()), CachedToken { token, expires });
    }

    /// Drops the token for `scope` at `upstream` (the upstream refused it).
    pub fn forget(&self, upstream: &str, scope: &str) {
        self.lock().remove(&(upstream.to_owned(), scope.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> TokenAnswer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn tokens_are_kept_per_upstream_and_scope_until_shortly_before_expiry() {
        let cache = TokenCache::default();
        let now = Instant::now();
        cache.insert("http://a", "repository:x:pull", Secret::new("t1".into()), Duration::from_secs(300), now);
        let got = |up, scope, at| cache.get(up, scope, at).map(|t: Secret<String>| t.expose_str().to_owned());
        assert_eq!(got("http://a", "repository:x:pull", now).as_deref(), Some("t1"));
        assert_eq!(got("http://a", "repository:x:pull,push", now), None, "another scope is another token");
        assert_eq!(got("http://b", "repository:x:pull", now), None, "another upstream is another token");
        assert_eq!(got("http://a", "repository:x:pull", now + Duration::from_secs(289)).as_deref(), Some("t1"));
        assert_eq!(got("http://a", "repository:x:pull", now + Duration::from_secs(290)), None, "10 s margin");
        // a short life keeps a quarter of itself as the margin
        cache.insert("http://a", "s", Secret::new("t2".into()), Duration::from_secs(4), now);
        assert!(got("http://a", "s", now + Duration::from_millis(2900)).is_some());
        assert_eq!(got("http://a", "s", now + Duration::from_secs(3)), None);
        cache.forget("http://a", "repository:x:pull");
        assert_eq!(got("http://a", "repository:x:pull", now), None);
        // an expired token is never handed out, nor one of zero life
        cache.insert("http://a", "z", Secret::new("t3".into()), Duration::ZERO, now);
        assert_eq!(got("http://a", "z", now), None);
        assert!(!format!("{cache:?}").contains("t2"));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::default();
        let now = Instant::now();
        for i in 0..TOKEN_CACHE_MAX + 10 {
            cache.insert("u", &format!("repository:r{i}:pull"), Secret::new("t".into()), Duration::from_secs(60), now);
        }
        assert!(cache.lock().len() <= TOKEN_CACHE_MAX);
    }

    #[test]
    fn lifetime_from_expires_in_and_issued_at() {
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap();
        let secs = |json: &str| answer(json).lifetime(now).as_secs();
        assert_eq!(secs(r#"{"token":"t"}"#), 60, "the spec's default");
        assert_eq!(secs(r#"{"token":"t","expires_in":0}"#), 60);
        assert_eq!(secs(r#"{"token":"t","expires_in":300}"#), 300);
        assert_eq!(secs(r#"{"token":"t","expires_in":9999999}"#), 86_400, "a day at most");
        assert_eq!(secs(r#"{"token":"t","expires_in":300,"issued_at":"2026-01-01T11:58:00Z"}"#), 180);
        assert_eq!(secs(r#"{"token":"t","expires_in":300,"issued_at":"2026-01-01T11:58:00.5Z"}"#), 180);
        assert_eq!(secs(r#"{"token":"t","expires_in":300,"issued_at":"2026-01-01T11:00:00Z"}"#), 0, "long expired");
        assert_eq!(secs(r#"{"token":"t","expires_in":300,"issued_at":"2026-01-01T12:05:00Z"}"#), 300, "never longer");
        assert_eq!(secs(r#"{"token":"t","expires_in":300,"issued_at":"yesterday"}"#), 300, "unreadable: ignored");
    }

    #[test]
    fn token_or_access_token_and_never_in_debug() {
        let token = |json: &str| answer(json).token().map(|t| t.expose_str().to_owned());
        assert_eq!(token(r#"{"token":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(token(r#"{"access_token":"xyz"}"#).as_deref(), Some("xyz"));
        assert_eq!(token(r#"{"token":"","access_token":"xyz"}"#).as_deref(), Some("xyz"));
        for bad in [r#"{}"#, r#"{"token":""}"#, r#"{"token":"a b"}"#, r#"{"token":"a\nb"}"#] {
            assert_eq!(token(bad), None, "{bad}");
        }
        assert!(!format!("{:?}", answer(r#"{"token":"hunter2","expires_in":5}"#)).contains("hunter2"));
    }
}
