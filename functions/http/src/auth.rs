//! Bearer tokens on `/v2/*`: the challenge, verification, scope checks; and the source of a `/token` request.

use crate::response::ApiError;
use crate::state::App;
use axum::http::{HeaderMap, HeaderValue, header};
use metahub_core::cache::BoundedMap;
use metahub_core::ports::Account;
use metahub_core::reference::RepositoryName;
use metahub_core::token::{Claims, account_fingerprint};
use metahub_core::{Error, ErrorCode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `Bearer realm=…,service=…[,scope=…][,error=…]`, as the token auth spec writes it.
fn challenge(app: &App, headers: &HeaderMap, scope: Option<&str>, error: Option<&str>) -> HeaderValue {
    let mut value = format!(
        "Bearer realm=\"{}/token\",service=\"{}\"",
        crate::response::public_url(app, headers),
        app.config.service
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(error) = error {
        value.push_str(&format!(",error=\"{error}\""));
    }
    // Built from configuration and validated names only; a failure here is a configuration bug.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// How long an account's state is reused before the store is asked again: the bound within which deleting an
/// account, or changing its password, machine type or repositories, takes effect on tokens already issued.
pub const ACCOUNT_RECHECK: Duration = Duration::from_secs(30);

/// The current state of accounts, as tokens are checked against it; read from the store at most every
/// [`ACCOUNT_RECHECK`] per login and process.
pub struct AccountCheck {
    recent: BoundedMap<String, (Instant, Option<Account>)>,
}

impl Default for AccountCheck {
    fn default() -> Self {
        AccountCheck { recent: BoundedMap::new(10_000, 4 << 20, |(_, a)| a.as_ref().map_or(0, account_weight)) }
    }
}

fn account_weight(a: &Account) -> usize {
    let names = a.login.as_str().len() + a.machine_type.as_str().len();
    names + a.password_hash.expose_str().len() + a.repositories.iter().map(String::len).sum::<usize>()
}

impl AccountCheck {
    async fn current(&self, app: &App, login: &str) -> Result<Option<Account>, Error> {
        if let Some((at, account)) = self.recent.get(&login.to_owned())
            && at.elapsed() < ACCOUNT_RECHECK
        {
            return Ok(account);
        }
        // Signed tokens name valid logins only.
        let account = app.registry.store().account(&login.parse()?).await?;
        self.recent.insert(login.to_owned(), (Instant::now(), account.clone()));
        Ok(account)
    }

    /// The account changed in this process: the next check reads the store.
    pub(crate) fn forget(&self, login: &str) {
        self.recent.remove(&login.to_owned());
    }

    /// Refuses a token whose account is gone or changed since login, or that names a repository the account may
    /// no longer pull; an anonymous token only while anonymous pulls of its machine type are on.
    async fn check(&self, app: &App, claims: &Claims, repository: Option<&RepositoryName>) -> Result<(), Error> {
        let Some(fp) = &claims.fp else {
            return match &app.config.anonymous_machine_type {
                Some(mt) if *mt == claims.mt => Ok(()),
                _ => Err(Error::unauthorized("anonymous pulls are off; log in")),
            };
        };
        let account = self.current(app, &claims.sub).await?;
        match account {
            Some(a) if account_fingerprint(&a) == *fp => match repository {
                Some(r) if !app.registry.may_pull(&a, r) => {
                    Err(Error::denied(format!("account {:?} may not pull {r}", claims.sub)))
                }
                _ => Ok(()),
            },
            _ => {
                Err(Error::unauthorized("the account was deleted or changed since this token was issued; log in again"))
            }
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`, if the request has one: a pull token on `/v2/*`, the
/// admin secret on `/admin/*`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| credentials_of_scheme(v, "Bearer"))
}

/// The claims of a valid bearer token that may pull `repository` (or any valid token, for the ping).
pub async fn authorize(
    app: &App,
    headers: &HeaderMap,
    repository: Option<&RepositoryName>,
) -> Result<Claims, ApiError> {
    let scope = repository.map(|r| format!("repository:{r}:pull"));
    let refuse = |error: Error, reason: Option<&str>| {
        ApiError::from(error).with_header(header::WWW_AUTHENTICATE, challenge(app, headers, scope.as_deref(), reason))
    };
    let Some(token) = bearer(headers) else {
        return Err(refuse(Error::unauthorized("authentication required"), None));
    };
    let claims = app.keys.verify(token).map_err(|e| refuse(e, Some("invalid_token")))?;
    if let Some(repository) = repository
        && !claims.may_pull(repository)
    {
        return Err(refuse(
            Error::unauthorized(format!("token does not grant pull of {repository}")),
            Some("insufficient_scope"),
        ));
    }
    app.accounts.check(app, &claims, repository).await.map_err(|e| match e.code {
        ErrorCode::Unauthorized => refuse(e, Some("invalid_token")),
        _ => e.into(),
    })?;
    metahub_core::observe::machine_type(claims.mt.as_str());
    Ok(claims)
}

/// The credentials of an `Authorization` value in `scheme`, matched case-insensitively (RFC 7235 §2.1).
pub fn credentials_of_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, credentials) = value.trim_start().split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| credentials.trim())
}

/// The client's address, for throttling: behind CloudFront (an origin secret is configured) the
/// `CloudFront-Viewer-Address` header, which CloudFront sets itself; otherwise the peer of the connection.
/// `X-Forwarded-For` is never trusted: a client could change it on every try.
pub fn source_of(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    if app.config.origin_secret.is_some() {
        let viewer = headers.get("cloudfront-viewer-address").and_then(|v| v.to_str().ok())?;
        // "ip:port", where an IPv6 ip itself contains colons.
        return Some(viewer.rsplit_once(':').map_or(viewer, |(ip, _)| ip).to_owned());
    }
    peer.map(|p| p.ip().to_string())
}
