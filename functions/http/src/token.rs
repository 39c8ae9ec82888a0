//! `/token`: GET with Basic auth (docker, podman, skopeo) and POST with the OAuth2 password form (containerd).

use crate::auth::{credentials_of_scheme, source_of};
use crate::response::ApiError;
use crate::state::App;
use crate::verified::{CredentialId, Flight, hash_digest};
use axum::Extension;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use bytes::Bytes;
use metahub_core::login::{self, LoginCheck, TokenIssuer};
use metahub_core::names::Login;
use metahub_core::observe::{self, LoginResult};
use metahub_core::ports::Account;
use metahub_core::{Error, ErrorCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

struct TokenRequest {
    credentials: Option<(String, String)>,
    service: Option<String>,
    scopes: Vec<String>,
}

fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let malformed = || ApiError::from(Error::unauthorized("malformed Basic credentials"));
    let encoded = value.to_str().ok().and_then(|v| credentials_of_scheme(v, "Basic")).ok_or_else(malformed)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (login, password) = text.split_once(':').ok_or_else(malformed)?;
    // Some clients always send Basic, empty when they have nothing (`Og==`): that is an anonymous request.
    if login.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some((login.to_owned(), password.to_owned())))
}

/// The connection's peer, when the server provides it (`metahub serve` does; Lambda does not).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

pub async fn get_token(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = form_pairs(query.unwrap_or_default().as_bytes());
    let request = TokenRequest {
        credentials: basic_credentials(&headers)?,
        service: pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()),
        scopes: pairs.into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect(),
    };
    issue(&app, &headers, peer, request).await
}

pub async fn post_token(
    State(app): State<Arc<App>>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body =
        body.map_err(|e| Error::new(ErrorCode::TooLarge, format!("token request body refused: {}", e.body_text())))?;
    let pairs = form_pairs(&body);
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match field("grant_type").as_deref() {
        Some("password") => {}
        other => {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!("grant_type {other:?} is not supported; use password"),
            )
            .into());
        }
    }
    let credentials = match (field("username"), field("password")) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => return Err(Error::unauthorized("username and password are required").into()),
    };
    let request = TokenRequest {
        credentials,
        service: field("service"),
        // OAuth2 joins scopes with spaces; the registry scopes themselves never contain one.
        scopes: pairs.iter().filter(|(k, _)| k == "scope").flat_map(|(_, v)| v.split(' ').map(str::to_owned)).collect(),
    };
    issue(&app, &headers, peer, request).await
}

async fn issue(app: &App, headers: &HeaderMap, peer: Peer, request: TokenRequest) -> Result<Json<Value>, ApiError> {
    let issuer = TokenIssuer {
        keys: &app.keys,
        registry: &app.registry,
        service: &app.config.service,
        anonymous: app.config.anonymous_machine_type.as_ref(),
    };
    issuer.check_service(request.service.as_deref())?;
    let issued = match request.credentials {
        Some((login, password)) => {
            let source = source_of(app, headers, peer.map(|Extension(ConnectInfo(addr))| addr));
            let account = login_account(app, source, &login, password).await?;
            issuer.for_account(&account, &request.scopes)?
        }
        // No anonymous machine type: ask for credentials, as a registry does.
        None => issuer.anonymous(&request.scopes).map_err(|e| match e.code {
            ErrorCode::Unauthorized => ApiError::from(e)
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"metahub\"")),
            _ => ApiError::from(e),
        })?,
    };
    Ok(Json(json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": rfc3339(issued.issued_at),
    })))
}

/// [`metahub_core::login`]'s two halves, inside this transport's guards: the throttle per account and source, and
/// the hashing gate the argon2id check runs in. Credentials verified a moment ago skip both (see
/// [`crate::verified`]); everything else, every wrong password included, goes through them.
async fn login_account(app: &App, source: Option<String>, login: &str, password: String) -> Result<Account, ApiError> {
    let invalid = || ApiError::from(Error::unauthorized("invalid username or password"));
    // Nothing malformed reaches the throttle's maps or the hash; it cannot be a real account either.
    let Some(login) = login::login_attempt(login, &password) else { return Err(invalid()) };
    let id = app.verified.id(login.as_str(), &password);
    if let Some(account) = recently_verified(app, &login, source.as_deref(), &id).await {
        return Ok(account);
    }
    // The same credentials being checked right now (a fleet logging in at once): wait for that answer instead of
    // queueing for the gate. The lead is held until this check is over, remembered or not.
    let _lead = match app.verified.join(id) {
        Flight::Lead(lead) => Some(lead),
        Flight::Wait(wait) => {
            wait.done().await;
            if let Some(account) = recently_verified(app, &login, source.as_deref(), &id).await {
                return Ok(account);
            }
            None
        }
        Flight::Alone => None,
    };
    let busy = || {
        ApiError::from(Error::new(ErrorCode::Unavailable, "too many logins at once; try again shortly"))
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    };
    let admission = app.hashing.admit().map_err(|_| busy())?;
    let attempt = app.throttle.begin(login.as_str(), source.as_deref()).await.map_err(|refusal| {
        observe::login(login.as_str(), LoginResult::Throttled);
        ApiError::from(Error::new(ErrorCode::TooManyRequests, "too many failed logins; try again later"))
            .with_header(header::RETRY_AFTER, HeaderValue::from(refusal.retry_after.as_secs().max(1)))
    })?;
    let check = match LoginCheck::read(app.registry.store().as_ref(), &login).await {
        Ok(check) => check,
        Err(e) => {
            attempt.withdraw();
            return Err(e.into());
        }
    };
    // Unknown logins are checked against a dummy hash: the same time, and the same place in the gate.
    let Ok(verified) = admission.run(move || check.verify(&password)).await else {
        attempt.withdraw();
        return Err(busy());
    };
    match verified {
        Some(account) => {
            attempt.succeeded();
            app.verified.remember(id, login.as_str(), &account.password_hash);
            observe::login(login.as_str(), LoginResult::Ok);
            observe::machine_type(account.machine_type.as_str());
            Ok(account)
        }
        None => {
            observe::login(login.as_str(), LoginResult::Failed);
            tracing::info!(login = login.as_str(), "failed login");
            Err(invalid())
        }
    }
}

/// The account of credentials verified less than [`crate::verified::VERIFIED_LIFETIME`] ago, read from the store as
/// every login reads it, while its hash is still the one they matched and the throttle would not refuse this
/// attempt; `None` sends the login through the throttle and the hash. A change made anywhere (another process or
/// Lambda instance) is seen here at once: only the hash is skipped, never the read.
async fn recently_verified(app: &App, login: &Login, source: Option<&str>, id: &CredentialId) -> Option<Account> {
    let verified_hash = app.verified.get(id)?;
    if app.throttle.refuses(login.as_str(), source) {
        return None;
    }
    match app.registry.store().account(login).await {
        Ok(Some(account)) if hash_digest(&account.password_hash) == verified_hash => {
            observe::login(login.as_str(), LoginResult::Ok);
            observe::machine_type(account.machine_type.as_str());
            Some(account)
        }
        Ok(_) => {
            app.verified.drop_entry(id);
            None
        }
        // The store failed: the full path says so.
        Err(_) => None,
    }
}

/// Seconds since the epoch as RFC 3339 UTC, as the token spec's `issued_at` wants.
fn rfc3339(seconds: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
