//! A machine's login and the token it is issued: the `/token` use case.
//!
//! The transports parse a request (`/token`'s Basic header or OAuth2 form) and run the password check inside their
//! guards: in `metahub_http`, the throttle per account and source, the hashing gate the argon2id check runs in, and
//! the credentials verified a moment ago. Every decision is made here:
//! - a login is worth checking only when it is well formed ([`login_attempt`]);
//! - it is checked in two halves ([`LoginCheck`]): the store read, then argon2id (the slow half, which the guards
//!   admit);
//! - the token ([`TokenIssuer`]): the service asked for must be ours; an account is granted pull on the scopes it
//!   may pull; a request without credentials gets the anonymous machine type's token when one is configured.

use crate::error::{Error, Result};
use crate::machine::MachineTypeName;
use crate::names::Login;
use crate::password::{MAX_PASSWORD_LEN, hash_password, verify_password};
use crate::ports::{Account, Store};
use crate::secret::Secret;
use crate::service::RegistryService;
use crate::token::{Access, IssuedToken, TokenKeys, account_fingerprint};
use std::sync::LazyLock;

/// Compared against when the login is unknown, so that unknown and known logins take the same time.
static DUMMY_HASH: LazyLock<Secret<String>> =
    LazyLock::new(|| hash_password("metahub-dummy-password").unwrap_or_default().into());

/// The login a request names, when it is worth checking: a well-formed login with a password of at most
/// [`MAX_PASSWORD_LEN`] bytes. Anything else cannot be an account's, and never reaches a throttle, the store or
/// the hash.
pub fn login_attempt(login: &str, password: &str) -> Option<Login> {
    (password.len() <= MAX_PASSWORD_LEN).then(|| login.parse().ok()).flatten()
}

/// The first half of a login: the account a login names, and the hash its password is checked against.
pub struct LoginCheck {
    account: Option<Account>,
}

impl LoginCheck {
    /// Reads the account (none for an unknown login).
    pub async fn read(store: &dyn Store, login: &Login) -> Result<LoginCheck> {
        Ok(LoginCheck { account: store.account(login).await? })
    }

    /// The second half: argon2id within the accepted parameters, against the account's hash or, for an unknown
    /// login, a dummy one (the same time either way). Slow and blocking: run it off the async workers. The
    /// account when the password matches.
    pub fn verify(self, password: &str) -> Option<Account> {
        let hash = self.account.as_ref().map_or(&*DUMMY_HASH, |a| &a.password_hash);
        let matches = verify_password(password, hash.expose_str());
        self.account.filter(|_| matches)
    }
}

/// Issues the tokens of one MetaHub: its keys, its `service`, and the machine type of requests without credentials.
pub struct TokenIssuer<'a> {
    pub keys: &'a TokenKeys,
    /// Reads an account's allow-list by the upstream's naming rules.
    pub registry: &'a RegistryService,
    pub service: &'a str,
    pub anonymous: Option<&'a MachineTypeName>,
}

impl TokenIssuer<'_> {
    /// A request naming another `service` is refused before any credential is checked.
    pub fn check_service(&self, asked: Option<&str>) -> Result<()> {
        match asked {
            Some(service) if service != self.service => {
                Err(Error::unauthorized(format!("unknown service {service:?}")))
            }
            _ => Ok(()),
        }
    }

    /// The token of a logged-in account: only what it may pull is granted, whatever the scopes ask.
    pub fn for_account(&self, account: &Account, scopes: &[String]) -> Result<IssuedToken> {
        let access = granted(scopes)
            .filter(|a| a.name.parse().is_ok_and(|name| self.registry.may_pull(account, &name)))
            .collect();
        let fingerprint = Some(account_fingerprint(account));
        self.keys.issue_with_fingerprint(account.login.as_str(), &account.machine_type, fingerprint, access)
    }

    /// The token of a request without credentials: the anonymous machine type's, pulling every scope asked for, or
    /// `UNAUTHORIZED` ("credentials required") when none is configured.
    pub fn anonymous(&self, scopes: &[String]) -> Result<IssuedToken> {
        let machine_type = self.anonymous.ok_or_else(|| Error::unauthorized("credentials required"))?;
        self.keys.issue("anonymous", machine_type, granted(scopes).collect())
    }
}

/// The pulls the scopes ask for (MetaHub grants nothing else).
fn granted(scopes: &[String]) -> impl Iterator<Item = Access> + '_ {
    scopes.iter().filter_map(|s| Access::granted_for_scope(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminPort, AdminService, NewAccount, NewPassword};
    use crate::cache::CacheOptions;
    use crate::error::ErrorCode;
    use crate::machine::{MachineType, MatchMode};
    use crate::testing::{FakeUpstream, MemoryStore};
    use std::sync::Arc;

    fn login(s: &str) -> Login {
        s.parse().unwrap()
    }

    async fn service() -> (Arc<MemoryStore>, AdminService) {
        let store = Arc::new(MemoryStore::default());
        let admin = AdminService::new(store.clone(), "tester");
        admin.put_machine_type(MachineType::new("skl", vec![], MatchMode::Best).unwrap()).await.unwrap();
        (store, admin)
    }

    async fn account(admin: &AdminService, user: &str, password: &str, repositories: &[&str]) -> Account {
        let new = NewAccount {
            login: login(user),
            machine_type: "skl".parse().unwrap(),
            password: NewPassword::Plain(password.into()),
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
        };
        admin.put_account(new).await.unwrap()
    }

    #[tokio::test]
    async fn a_login_check_finds_the_account_whose_password_it_is() {
        let (store, admin) = service().await;
        account(&admin, "n1", "right password", &[]).await;
        let check = |user: &'static str, password: &'static str| {
            let store = store.clone();
            async move {
                let login = login_attempt(user, password)?;
                LoginCheck::read(store.as_ref(), &login).await.unwrap().verify(password)
            }
        };
        let account = check("n1", "right password").await.unwrap();
        assert_eq!((account.login.as_str(), account.machine_type.as_str()), ("n1", "skl"));
        for (user, password) in [("n1", "wrong password"), ("nobody", "right password"), ("bad name", "x")] {
            assert!(check(user, password).await.is_none(), "{user}");
        }
        let too_long = "x".repeat(MAX_PASSWORD_LEN + 1);
        assert_eq!(login_attempt("n1", &too_long), None, "never hashed");
        assert_eq!(login_attempt("n1", "right password"), Some(login("n1")));
    }

    #[tokio::test]
    async fn tokens_grant_what_the_account_may_pull_and_anonymous_only_when_configured() {
        let (store, admin) = service().await;
        let limited = account(&admin, "n1", "right password", &["org/"]).await;
        let registry = RegistryService::new(store, Arc::new(FakeUpstream::default()), CacheOptions::default());
        let keys = TokenKeys::new(&[7; 32], "metahub", 300).unwrap();
        let anonymous: MachineTypeName = "skl".parse().unwrap();
        let mut issuer = TokenIssuer { keys: &keys, registry: &registry, service: "metahub", anonymous: None };

        assert!(issuer.check_service(None).is_ok() && issuer.check_service(Some("metahub")).is_ok());
        let e = issuer.check_service(Some("other")).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Unauthorized, "unknown service \"other\""));

        let scopes: Vec<String> = [
            "repository:org/app:pull,push",
            "repository:other/app:pull",
            "registry:catalog:*",
            "repository:org/x:push",
        ]
        .map(String::from)
        .into();
        let claims = keys.verify(&issuer.for_account(&limited, &scopes).unwrap().token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.mt.as_str()), ("n1", "skl"));
        assert!(claims.fp.is_some(), "an account's token remembers the account");
        let names: Vec<&str> = claims.access.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["org/app"], "only pull, only within the allow-list");
        assert_eq!(claims.access[0].actions, ["pull"]);

        let Err(e) = issuer.anonymous(&scopes) else { panic!("anonymous off, yet a token") };
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Unauthorized, "credentials required"));
        issuer.anonymous = Some(&anonymous);
        let claims = keys.verify(&issuer.anonymous(&scopes).unwrap().token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.mt.as_str(), claims.fp), ("anonymous", "skl", None));
        let names: Vec<&str> = claims.access.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["org/app", "other/app"], "every pull asked for, no push");
    }
}
