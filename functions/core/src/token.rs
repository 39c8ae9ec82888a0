//! Bearer tokens: HS256 JWTs that carry the account, its machine type and the repository scopes granted.
//! The algorithm is pinned; `exp`, `nbf`, `aud` and `iss` are always checked.

use crate::error::{Error, Result};
use crate::reference::RepositoryName;
use crate::secret::Secret;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

const ALGORITHM: Algorithm = Algorithm::HS256;
pub const ISSUER: &str = "metahub";
/// The longest token lifetime accepted: a stolen token is worth at most this long, and revocation (account
/// checks) covers the rest.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 3600;

/// What a token remembers of its account: a change of any of these (or deletion) revokes the account's tokens.
pub fn account_fingerprint(account: &crate::ports::Account) -> String {
    let mut text = format!("{}\0{}\0{}", account.login, account.machine_type, account.password_hash.expose_str());
    for prefix in &account.repositories {
        text.push('\0');
        text.push_str(prefix);
    }
    let digest = crate::reference::Digest::sha256_of(text.as_bytes());
    digest.as_str().trim_start_matches("sha256:").chars().take(32).collect()
}

/// One `type:name:actions` grant, as the token auth spec writes it in `access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses a `scope` parameter item (`repository:org/image:pull,push`), granting only `pull`: MetaHub is read-only.
    /// Scopes of other types or with a malformed name are dropped, as the spec allows.
    pub fn granted_for_scope(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind != "repository" || name.parse::<RepositoryName>().is_err() {
            return None;
        }
        actions.split(',').any(|a| a == "pull").then(|| Access {
            kind: kind.into(),
            name: name.into(),
            actions: vec!["pull".into()],
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    /// The machine type the account pulls as.
    pub mt: String,
    /// The account as it was at login ([`account_fingerprint`]): a token whose account has since been deleted or
    /// changed (password, machine type, repositories) is refused. `None`: an anonymous token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    pub fn may_pull(&self, repository: &RepositoryName) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "repository" && a.name == repository.as_str() && a.actions.iter().any(|x| x == "pull"))
    }
}

/// An issued token, with what the token endpoint answers besides it.
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: u64,
}

/// Signs and verifies tokens with one HMAC key. Its Debug never shows the key.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    encoding: Secret<EncodingKey>,
    decoding: Secret<DecodingKey>,
    audience: String,
    ttl_seconds: u64,
}

pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenKeys {
    /// `audience` is the registry's service name; `key` at least 32 bytes.
    pub fn new(key: &[u8], audience: &str, ttl_seconds: u64) -> Result<Self> {
        if key.len() < 32 {
            return Err(Error::internal("token signing key must be at least 32 bytes"));
        }
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(Error::internal(format!(
                "token lifetime must be 1 to {MAX_TOKEN_TTL_SECONDS} seconds, not {ttl_seconds}"
            )));
        }
        let bad_key = |e: jsonwebtoken::errors::Error| Error::internal(format!("token signing key: {e}"));
        Ok(TokenKeys {
            encoding: Secret::new(EncodingKey::from_secret(key).map_err(bad_key)?),
            decoding: Secret::new(DecodingKey::from_secret(key).map_err(bad_key)?),
            audience: audience.to_owned(),
            ttl_seconds,
        })
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// An anonymous token (no account behind it).
    pub fn issue(&self, login: &str, machine_type: &str, access: Vec<Access>) -> Result<IssuedToken> {
        self.issue_with_fingerprint(login, machine_type, None, access)
    }

    /// A token of an account, remembering its [`account_fingerprint`].
    pub fn issue_with_fingerprint(
        &self,
        login: &str,
        machine_type: &str,
        fp: Option<String>,
        access: Vec<Access>,
    ) -> Result<IssuedToken> {
        let now = now_seconds();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: login.into(),
            aud: self.audience.clone(),
            exp: now + self.ttl_seconds,
            nbf: now,
            iat: now,
            mt: machine_type.into(),
            fp,
            access,
        };
        let token = jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, self.encoding.expose())
            .map_err(|e| Error::internal(format!("signing token: {e}")))?;
        Ok(IssuedToken { token, expires_in: self.ttl_seconds, issued_at: now })
    }

    /// Verifies signature (HS256 only), expiry, not-before, audience and issuer.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, self.decoding.expose(), &validation)
            .map(|data| data.claims)
            .map_err(|e| Error::unauthorized(format!("invalid token: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> TokenKeys {
        TokenKeys::new(&[7u8; 32], "metahub", 300).unwrap()
    }

    #[test]
    fn round_trip_and_scope() {
        let access = Access::granted_for_scope("repository:org/img:pull,push").unwrap();
        assert_eq!(access.actions, ["pull"]);
        assert!(Access::granted_for_scope("repository:org/img:push").is_none());
        assert!(Access::granted_for_scope("repository:../x:pull").is_none());
        let t = keys().issue("alice", "hsw", vec![access]).unwrap();
        let c = keys().verify(&t.token).unwrap();
        assert_eq!((c.sub.as_str(), c.mt.as_str()), ("alice", "hsw"));
        assert!(c.may_pull(&"org/img".parse().unwrap()));
        assert!(!c.may_pull(&"org/other".parse().unwrap()));
    }

    #[test]
    fn the_lifetime_is_capped() {
        assert!(TokenKeys::new(&[7u8; 32], "metahub", MAX_TOKEN_TTL_SECONDS).is_ok());
        assert!(TokenKeys::new(&[7u8; 32], "metahub", MAX_TOKEN_TTL_SECONDS + 1).is_err());
        assert!(TokenKeys::new(&[7u8; 32], "metahub", 0).is_err());
    }

    #[test]
    fn refuses_forged_expired_other_audience_and_alg_none() {
        let t = keys().issue("alice", "hsw", vec![]).unwrap().token;
        assert!(TokenKeys::new(&[8u8; 32], "metahub", 300).unwrap().verify(&t).is_err());
        assert!(TokenKeys::new(&[7u8; 32], "other", 300).unwrap().verify(&t).is_err());
        let expired = TokenKeys::new(&[7u8; 32], "metahub", 1).unwrap();
        let mut claims = keys().verify(&t).unwrap();
        claims.exp = now_seconds() - 60;
        let old = jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, expired.encoding.expose()).unwrap();
        assert!(keys().verify(&old).is_err());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(keys().verify(&none).is_err());
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, keys().encoding.expose()).unwrap();
        assert!(keys().verify(&hs512).is_err());
    }
}
