//! Bearer tokens: HS256 JWTs that carry the account, its machine type and the repository scopes granted.
//! The algorithm is pinned; `exp`, `nbf`, `aud` and `iss` are always checked.

use crate::error::{Error, Result};
use crate::machine::MachineTypeName;
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
    /// The machine type the account pulls as: on the wire the name as a string; a token whose `mt` is not a valid
    /// name does not decode, so it is refused as an invalid token.
    pub mt: MachineTypeName,
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

/// One version of the signing key: the SSM parameter version, the key, and when it was written (seconds since the
/// epoch). Tokens name the key by [`key_id`], not by the version: copies of one key in several regions (each its own
/// SSM parameter, with its own version numbers) verify each other's tokens.
pub struct KeyVersion {
    pub version: u64,
    pub key: Vec<u8>,
    pub written_at: u64,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion").field("version", &self.version).field("written_at", &self.written_at).finish()
    }
}

/// The `kid` of tokens signed with `key`: 16 hex digits of its SHA-256 (which tell nothing of a 256-bit random key).
pub fn key_id(key: &[u8]) -> String {
    let digest = crate::reference::Digest::sha256_of(key);
    digest.as_str().trim_start_matches("sha256:").chars().take(16).collect()
}

/// One usable key: its `kid` (none for a key that has no versions, such as the table-kept one) and both halves.
#[derive(Debug)]
struct Key {
    kid: Option<String>,
    encoding: Secret<EncodingKey>,
    decoding: Secret<DecodingKey>,
}

impl Key {
    fn new(kid: Option<String>, key: &[u8]) -> Result<Key> {
        if key.len() < 32 {
            return Err(Error::internal("token signing key must be at least 32 bytes"));
        }
        let bad_key = |e: jsonwebtoken::errors::Error| Error::internal(format!("token signing key: {e}"));
        Ok(Key {
            kid,
            encoding: Secret::new(EncodingKey::from_secret(key).map_err(bad_key)?),
            decoding: Secret::new(DecodingKey::from_secret(key).map_err(bad_key)?),
        })
    }
}

/// The keys in use: the current version, and during a rotation the one before it.
#[derive(Debug)]
struct Ring {
    current: Key,
    /// When the current version was written: it signs only once every instance has had time to read it.
    current_since: u64,
    previous: Option<Key>,
}

/// Signs and verifies tokens with an HMAC key that can rotate. Its Debug never shows a key.
///
/// Rotation without refused tokens, across instances that read the key at different times (Lambda keeps warm
/// instances for hours; a redeploy with nothing changed starts no new ones). Every instance re-reads the key at least
/// every `activation` (the adapter's refresh interval), and a new version written at `W`:
/// - signs nothing before `W + activation` (plus a few seconds of clock leeway): until then every instance, having
///   read it or not, signs with the previous version, which all of them know;
/// - verifies from the moment an instance reads it (each token names its key version in `kid`);
/// - the previous version keeps verifying for one token lifetime after the new one starts signing
///   (`W + activation + ttl`), then it is dropped.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    ring: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Ring>>>,
    audience: String,
    ttl_seconds: u64,
    activation_seconds: u64,
}

pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether the key version before one written at `written_at` may still be needed `now`: to sign (the new one is
/// not active yet) or to verify (tokens it signed may still be alive). Past that, reading it is not worth a call.
pub fn previous_key_needed(written_at: u64, now: u64, activation_seconds: u64, ttl_seconds: u64) -> bool {
    now <= activation_end(written_at, activation_seconds) + ttl_seconds + LEEWAY_SECONDS
}

/// When a version written at `written_at` starts signing: one activation later, plus the clock leeway (times are
/// whole seconds, and the writer's clock is not the instances').
fn activation_end(written_at: u64, activation_seconds: u64) -> u64 {
    written_at + activation_seconds + LEEWAY_SECONDS
}

/// Seconds of clock skew tolerated on `exp`/`nbf`, and on a key version's windows.
const LEEWAY_SECONDS: u64 = 5;

impl TokenKeys {
    /// One key that never rotates; `audience` is the registry's service name; `key` at least 32 bytes.
    pub fn new(key: &[u8], audience: &str, ttl_seconds: u64) -> Result<Self> {
        Self::check_ttl(ttl_seconds)?;
        let ring = Ring { current: Key::new(None, key)?, current_since: 0, previous: None };
        Ok(Self::from_ring(ring, audience, ttl_seconds, 0))
    }

    /// Versioned keys read from a parameter store: `current` and, during a rotation, `previous` (see the type's
    /// header); `activation` is at least how often every instance re-reads them.
    pub fn versioned(
        current: KeyVersion,
        previous: Option<KeyVersion>,
        audience: &str,
        ttl_seconds: u64,
        activation_seconds: u64,
    ) -> Result<Self> {
        Self::check_ttl(ttl_seconds)?;
        let ring = Self::ring_of(current, previous)?;
        Ok(Self::from_ring(ring, audience, ttl_seconds, activation_seconds))
    }

    fn check_ttl(ttl_seconds: u64) -> Result<()> {
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(Error::internal(format!(
                "token lifetime must be 1 to {MAX_TOKEN_TTL_SECONDS} seconds, not {ttl_seconds}"
            )));
        }
        Ok(())
    }

    fn ring_of(current: KeyVersion, previous: Option<KeyVersion>) -> Result<Ring> {
        Ok(Ring {
            current: Key::new(Some(key_id(&current.key)), &current.key)?,
            current_since: current.written_at,
            previous: previous
                .filter(|p| p.version != current.version)
                .map(|p| Key::new(Some(key_id(&p.key)), &p.key))
                .transpose()?,
        })
    }

    fn from_ring(ring: Ring, audience: &str, ttl_seconds: u64, activation_seconds: u64) -> Self {
        TokenKeys {
            ring: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(ring))),
            audience: audience.to_owned(),
            ttl_seconds,
            activation_seconds,
        }
    }

    /// Replaces the versions in use (a re-read of the parameter store); every clone of these keys sees the change.
    pub fn update(&self, current: KeyVersion, previous: Option<KeyVersion>) -> Result<()> {
        let ring = std::sync::Arc::new(Self::ring_of(current, previous)?);
        *self.ring.write().unwrap_or_else(std::sync::PoisonError::into_inner) = ring;
        Ok(())
    }

    /// [`previous_key_needed`] for these keys' activation and token lifetime.
    pub fn previous_needed(&self, written_at: u64, now: u64) -> bool {
        previous_key_needed(written_at, now, self.activation_seconds, self.ttl_seconds)
    }

    /// The `kid` new tokens are signed with (None for an unversioned key).
    pub fn signing_kid(&self) -> Option<String> {
        let ring = self.ring();
        self.signing_key(&ring, now_seconds()).kid.clone()
    }

    fn ring(&self) -> std::sync::Arc<Ring> {
        self.ring.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn signing_key<'a>(&self, ring: &'a Ring, now: u64) -> &'a Key {
        match &ring.previous {
            Some(previous) if now < activation_end(ring.current_since, self.activation_seconds) => previous,
            _ => &ring.current,
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// An anonymous token (no account behind it).
    pub fn issue(&self, login: &str, machine_type: &MachineTypeName, access: Vec<Access>) -> Result<IssuedToken> {
        self.issue_with_fingerprint(login, machine_type, None, access)
    }

    /// A token of an account, remembering its [`account_fingerprint`].
    pub fn issue_with_fingerprint(
        &self,
        login: &str,
        machine_type: &MachineTypeName,
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
            mt: machine_type.clone(),
            fp,
            access,
        };
        let ring = self.ring();
        let key = self.signing_key(&ring, now);
        let mut header = Header::new(ALGORITHM);
        header.kid = key.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, key.encoding.expose())
            .map_err(|e| Error::internal(format!("signing token: {e}")))?;
        Ok(IssuedToken { token, expires_in: self.ttl_seconds, issued_at: now })
    }

    /// Verifies signature (HS256 only, with the key version the token names), expiry, not-before, audience and
    /// issuer. The previous key version verifies until one token lifetime after the current one started signing.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut validation = Validation::new(ALGORITHM);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let invalid = |e: jsonwebtoken::errors::Error| Error::unauthorized(format!("invalid token: {e}"));
        let kid = jsonwebtoken::decode_header(token).map_err(invalid)?.kid;
        let ring = self.ring();
        let previous_alive = self.previous_needed(ring.current_since, now_seconds());
        let keys = std::iter::once(&ring.current).chain(ring.previous.as_ref().filter(|_| previous_alive));
        let mut candidates = keys.filter(|k| kid.is_none() || k.kid == kid).peekable();
        if candidates.peek().is_none() {
            return Err(Error::unauthorized("invalid token: signed with a key version no longer (or not yet) in use"));
        }
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key.decoding.expose(), &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| Error::unauthorized("invalid token"), invalid))
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
        let t = keys().issue("alice", &"hsw".parse().unwrap(), vec![access]).unwrap();
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
        let t = keys().issue("alice", &"hsw".parse().unwrap(), vec![]).unwrap().token;
        assert!(TokenKeys::new(&[8u8; 32], "metahub", 300).unwrap().verify(&t).is_err());
        assert!(TokenKeys::new(&[7u8; 32], "other", 300).unwrap().verify(&t).is_err());
        let expired = TokenKeys::new(&[7u8; 32], "metahub", 1).unwrap();
        let mut claims = keys().verify(&t).unwrap();
        claims.exp = now_seconds() - 60;
        let old =
            jsonwebtoken::encode(&Header::new(ALGORITHM), &claims, expired.ring().current.encoding.expose()).unwrap();
        assert!(keys().verify(&old).is_err());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#));
        assert!(keys().verify(&none).is_err());
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, keys().ring().current.encoding.expose())
                .unwrap();
        assert!(keys().verify(&hs512).is_err());
    }

    #[test]
    fn the_machine_type_travels_as_a_string_and_a_bad_one_is_an_invalid_token() {
        let t = keys().issue("alice", &"hsw-m60".parse().unwrap(), vec![]).unwrap().token;
        let claims = keys().verify(&t).unwrap();
        let wire = serde_json::to_value(&claims).unwrap();
        assert_eq!(wire["mt"], serde_json::json!("hsw-m60"), "same wire format as before");
        let mut bad = wire.clone();
        bad["mt"] = serde_json::json!("bad name");
        let forged =
            jsonwebtoken::encode(&Header::new(ALGORITHM), &bad, keys().ring().current.encoding.expose()).unwrap();
        let e = keys().verify(&forged).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::Unauthorized);
        assert!(e.message.starts_with("invalid token"), "{}", e.message);
    }

    fn version(version: u64, byte: u8, written_at: u64) -> KeyVersion {
        KeyVersion { version, key: vec![byte; 32], written_at }
    }

    fn kid_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).unwrap().kid
    }

    #[test]
    fn a_rotation_refuses_no_token_between_instances() {
        let now = now_seconds();
        // Instance A read version 1 before the rotation and has not re-read yet.
        let a = TokenKeys::versioned(version(1, 1, now - 86_400), None, "metahub", 300, 60).unwrap();
        // Version 2 was just written; instance B started after that and reads both.
        let b =
            TokenKeys::versioned(version(2, 2, now), Some(version(1, 1, now - 86_400)), "metahub", 300, 60).unwrap();
        // Until every instance can have read version 2, B signs with version 1: A accepts B's tokens...
        let from_b = b.issue("alice", &"hsw".parse().unwrap(), vec![]).unwrap().token;
        assert_eq!(kid_of(&from_b), Some(key_id(&[1u8; 32])));
        assert!(a.verify(&from_b).is_ok());
        // ...and B accepts A's.
        let from_a = a.issue("alice", &"hsw".parse().unwrap(), vec![]).unwrap().token;
        assert!(b.verify(&from_a).is_ok());

        // Past the activation, B signs with version 2; A has re-read by then (update) and accepts it.
        b.update(version(2, 2, now - 66), Some(version(1, 1, now - 86_400))).unwrap();
        let from_b = b.issue("alice", &"hsw".parse().unwrap(), vec![]).unwrap().token;
        assert_eq!(kid_of(&from_b), Some(key_id(&[2u8; 32])));
        assert!(a.verify(&from_b).is_err(), "not before A re-reads");
        a.update(version(2, 2, now - 66), Some(version(1, 1, now - 86_400))).unwrap();
        assert!(a.verify(&from_b).is_ok());
        // Tokens of version 1 still verify for one token lifetime after version 2 started signing...
        assert!(b.verify(&from_a).is_ok());
        // ...and not after it: the previous version is dropped.
        let long_ago = now - 60 - 300 - 2 * LEEWAY_SECONDS - 1;
        b.update(version(2, 2, long_ago), Some(version(1, 1, now - 86_400))).unwrap();
        let e = b.verify(&from_a).unwrap_err();
        assert!(e.message.contains("no longer"), "{}", e.message);
        assert!(!b.previous_needed(long_ago, now));
        assert!(b.previous_needed(now - 10, now));
    }

    #[test]
    fn a_token_is_checked_with_the_key_version_it_names() {
        let now = now_seconds();
        let b =
            TokenKeys::versioned(version(2, 2, now - 100), Some(version(1, 1, now - 900)), "metahub", 300, 60).unwrap();
        let v1 = TokenKeys::versioned(version(1, 1, 0), None, "metahub", 300, 60).unwrap();
        let token = v1.issue("alice", &"hsw".parse().unwrap(), vec![]).unwrap().token;
        assert!(b.verify(&token).is_ok());
        // a forged kid: version 2's key does not verify version 1's signature
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(key_id(&[2u8; 32]));
        let claims = v1.verify(&token).unwrap();
        let forged = jsonwebtoken::encode(&header, &claims, v1.ring().current.encoding.expose()).unwrap();
        assert!(b.verify(&forged).is_err());
        // an unversioned token (signed before versions were used) is tried against every key in use
        let plain = TokenKeys::new(&[1u8; 32], "metahub", 300)
            .unwrap()
            .issue("alice", &"hsw".parse().unwrap(), vec![])
            .unwrap()
            .token;
        assert_eq!(kid_of(&plain), None);
        assert!(b.verify(&plain).is_ok());
        assert!(!format!("{b:?}").contains("[1, 1"), "no key in Debug");
    }
}
