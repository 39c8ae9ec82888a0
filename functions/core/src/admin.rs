//! The operator's use cases: machine types, accounts, the audit log, the watched images.
//!
//! The admin API (`http`), the CLI and Lambda call an [`AdminPort`], which is either the [`AdminService`] over a store
//! or, for `metahub … --endpoint`, a client of a running MetaHub's admin API. In [`AdminService`] each write
//! validates, writes and records its audit entry together; services never call transports. A machine's login and
//! its token are [`crate::login`]'s; the explanation of a selection is [`crate::explain`]'s.

use crate::error::{Error, ErrorCode, Result};
use crate::machine::{MachineType, MachineTypeName};
use crate::names::Login;
use crate::password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, hash_password, validate_hash};
use crate::ports::{Account, AccountChange, Change, Store, validate_repository_prefix};
use crate::reference::ImageRef;
use crate::secret::Secret;
use crate::token::now_seconds;
use async_trait::async_trait;
use std::sync::Arc;

/// The most audit entries one read returns.
pub const MAX_CHANGES: usize = 1000;
/// Each watched image costs one upstream manifest check per matrix view.
pub const MAX_WATCHED_IMAGES: usize = 100;

/// What an operator can do, wherever it is carried out. Absent names answer `NAME_UNKNOWN` (with a `login` or
/// `machineType` detail); every write is recorded in the audit log by whoever carries it out.
#[async_trait]
pub trait AdminPort: Send + Sync {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<MachineType>;
    async fn machine_types(&self) -> Result<Vec<MachineType>>;
    /// Creates or replaces a machine type; the machine type as written.
    async fn put_machine_type(&self, machine_type: MachineType) -> Result<MachineType>;
    /// Refused with `DENIED`, naming them, while accounts use it.
    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<()>;

    async fn account(&self, login: &Login) -> Result<Account>;
    async fn accounts(&self) -> Result<Vec<Account>>;
    /// Creates or replaces an account; its machine type must exist.
    async fn put_account(&self, account: NewAccount) -> Result<Account>;
    /// A new password for an existing account, keeping whatever else it has at that moment.
    async fn rotate_password(&self, login: &Login, password: NewPassword) -> Result<Account>;
    /// Another machine type for an existing account, keeping its password (which cannot be read back to resend).
    async fn move_account(&self, login: &Login, machine_type: MachineTypeName) -> Result<Account>;
    async fn delete_account(&self, login: &Login) -> Result<()>;

    /// The newest `limit` (1 to [`MAX_CHANGES`]) audit entries, newest first.
    async fn changes(&self, limit: usize) -> Result<Vec<Change>>;
}

/// An account to create or replace.
#[derive(Debug)]
pub struct NewAccount {
    pub login: Login,
    pub machine_type: MachineTypeName,
    pub password: NewPassword,
    /// Repository prefixes the account may pull; empty: every repository.
    pub repositories: Vec<String>,
}

/// A password to set: the password itself (hashed by whoever receives it) or a PHC hash made elsewhere.
#[derive(Debug)]
pub enum NewPassword {
    Plain(Secret<String>),
    Hash(Secret<String>),
}

impl NewPassword {
    /// From a request's two optional fields, exactly one of which must be given.
    pub fn from_fields(password: Option<String>, password_hash: Option<String>) -> Result<NewPassword> {
        match (password, password_hash) {
            (Some(password), None) => Ok(NewPassword::Plain(password.into())),
            (None, Some(hash)) => Ok(NewPassword::Hash(hash.into())),
            (Some(_), Some(_)) => Err(Error::invalid("give either password or passwordHash, not both")),
            (None, None) => Err(Error::invalid("a password or passwordHash is required")),
        }
    }

    /// The PHC string to store: a password of [`MIN_PASSWORD_LEN`] to [`MAX_PASSWORD_LEN`] characters hashed here
    /// (argon2id, off the async workers), or a given hash within the accepted argon2id parameters.
    pub async fn into_hash(self) -> Result<Secret<String>> {
        match self {
            NewPassword::Plain(password) => {
                let len = password.expose_str().chars().count();
                if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) {
                    return Err(Error::invalid(format!(
                        "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
                    )));
                }
                let hashed = tokio::task::spawn_blocking(move || hash_password(password.expose_str()))
                    .await
                    .map_err(|e| Error::internal(format!("hashing the password: {e}")))??;
                Ok(hashed.into())
            }
            NewPassword::Hash(hash) => {
                // Not 4 GiB per login, not trivially crackable.
                validate_hash(hash.expose_str())?;
                Ok(hash)
            }
        }
    }
}

/// `NAME_UNKNOWN` for a machine type that does not exist.
pub fn unknown_machine_type(name: &MachineTypeName) -> Error {
    Error::new(ErrorCode::NameUnknown, format!("no machine type {:?}", name.as_str()))
        .with_detail(serde_json::json!({ "machineType": name }))
}

/// `NAME_UNKNOWN` for an account that does not exist.
pub fn unknown_account(login: &Login) -> Error {
    Error::new(ErrorCode::NameUnknown, format!("no account {:?}", login.as_str()))
        .with_detail(serde_json::json!({ "login": login }))
}

/// The use cases on a store, with every change recorded as made by one principal (an IAM ARN, `admin-secret`,
/// `cli:<user>`).
pub struct AdminService {
    store: Arc<dyn Store>,
    who: String,
}

impl AdminService {
    pub fn new(store: Arc<dyn Store>, who: impl Into<String>) -> Self {
        AdminService { store, who: who.into() }
    }

    /// Appends the audit entry of a change just written; a failure says the change itself was applied.
    async fn record(&self, action: &str, target: String) -> Result<()> {
        let change = Change { at: now_seconds(), who: self.who.clone(), action: action.to_owned(), target };
        self.store.record_change(&change).await.map_err(|e| {
            tracing::error!(action, target = %change.target, error = %e, "change applied but not recorded");
            Error::new(e.code, format!("the change was applied, but recording it failed: {}", e.message))
        })
    }

    /// The images operators watch on the admin page, sorted.
    pub async fn watched_images(&self) -> Result<Vec<String>> {
        self.store.watched_images().await
    }

    /// Adds an image (normalised: `org/app` → `org/app:latest`) to the watched list; the reference as kept, and
    /// whether it was new (only then is it recorded).
    pub async fn watch_image(&self, image: &ImageRef) -> Result<(String, bool)> {
        let image = image.to_string();
        if self.store.watched_images().await?.len() >= MAX_WATCHED_IMAGES {
            return Err(Error::denied(format!("at most {MAX_WATCHED_IMAGES} images can be watched")));
        }
        let added = self.store.watch_image(&image).await?;
        if added {
            self.record("watch-image", image.clone()).await?;
        }
        Ok((image, added))
    }

    /// Removes an image from the watched list; `NAME_UNKNOWN` when it was not there.
    pub async fn unwatch_image(&self, image: &ImageRef) -> Result<()> {
        let image = image.to_string();
        if !self.store.unwatch_image(&image).await? {
            return Err(Error::new(ErrorCode::NameUnknown, format!("{image} is not watched"))
                .with_detail(serde_json::json!({ "image": image })));
        }
        self.record("unwatch-image", image).await
    }

    /// One field of an account changed in one atomic write, and recorded.
    async fn change_account(&self, login: &Login, change: AccountChange) -> Result<Account> {
        let account = self.store.update_account(login, &change).await?.ok_or_else(|| unknown_account(login))?;
        match change {
            AccountChange::PasswordHash(_) => self.record("rotate-password", login.to_string()).await?,
            AccountChange::MachineType(_) => {
                self.record("put-account", format!("{} machineType={}", account.login, account.machine_type)).await?
            }
        }
        Ok(account)
    }
}

#[async_trait]
impl AdminPort for AdminService {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<MachineType> {
        self.store.machine_type(name).await?.ok_or_else(|| unknown_machine_type(name))
    }

    async fn machine_types(&self) -> Result<Vec<MachineType>> {
        self.store.list_machine_types().await
    }

    async fn put_machine_type(&self, machine_type: MachineType) -> Result<MachineType> {
        self.store.put_machine_type(&machine_type).await?;
        let mt = &machine_type;
        self.record("put-machine-type", format!("{} [{}] {}", mt.name, mt.features.join(","), mt.match_mode)).await?;
        Ok(machine_type)
    }

    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<()> {
        if !self.store.delete_machine_type(name).await? {
            return Err(unknown_machine_type(name));
        }
        self.record("delete-machine-type", name.to_string()).await
    }

    async fn account(&self, login: &Login) -> Result<Account> {
        self.store.account(login).await?.ok_or_else(|| unknown_account(login))
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.store.list_accounts().await
    }

    async fn put_account(&self, new: NewAccount) -> Result<Account> {
        for prefix in &new.repositories {
            validate_repository_prefix(prefix)?;
        }
        let account = Account {
            login: new.login,
            machine_type: new.machine_type,
            password_hash: new.password.into_hash().await?,
            repositories: new.repositories,
        };
        self.store.put_account(&account).await?;
        let mut target = format!("{} machineType={}", account.login, account.machine_type);
        if !account.repositories.is_empty() {
            target.push_str(&format!(" repositories={}", account.repositories.join(",")));
        }
        self.record("put-account", target).await?;
        Ok(account)
    }

    async fn rotate_password(&self, login: &Login, password: NewPassword) -> Result<Account> {
        let hash = password.into_hash().await?;
        // the hash alone: a concurrent move to another machine type is kept
        self.change_account(login, AccountChange::PasswordHash(hash)).await
    }

    async fn move_account(&self, login: &Login, machine_type: MachineTypeName) -> Result<Account> {
        // the machine type alone: a concurrent password rotation is kept
        self.change_account(login, AccountChange::MachineType(machine_type)).await
    }

    async fn delete_account(&self, login: &Login) -> Result<()> {
        if !self.store.delete_account(login).await? {
            return Err(unknown_account(login));
        }
        self.record("delete-account", login.to_string()).await
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        if !(1..=MAX_CHANGES).contains(&limit) {
            return Err(Error::invalid(format!("limit must be a number from 1 to {MAX_CHANGES}")));
        }
        self.store.changes(limit).await
    }
}

/// An image to watch, as the transports read it: refused with `NAME_INVALID` when it is no reference; the watched
/// list keeps its normal form (`org/app` → `org/app:latest`).
pub fn parse_watched_image(image: &str) -> Result<ImageRef> {
    let image = image.trim();
    let parsed: ImageRef = image.parse().map_err(|e: Error| {
        Error::new(
            ErrorCode::NameInvalid,
            format!("{image:?} is not an image reference (org/image:tag): {}", e.message),
        )
    })?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MatchMode;
    use crate::testing::MemoryStore;

    fn service() -> (Arc<MemoryStore>, AdminService) {
        let store = Arc::new(MemoryStore::default());
        (store.clone(), AdminService::new(store, "tester"))
    }

    fn name(s: &str) -> MachineTypeName {
        s.parse().unwrap()
    }

    fn login(s: &str) -> Login {
        s.parse().unwrap()
    }

    fn new_account(user: &str, machine_type: &str, password: &str) -> NewAccount {
        NewAccount {
            login: login(user),
            machine_type: name(machine_type),
            password: NewPassword::Plain(password.into()),
            repositories: vec![],
        }
    }

    async fn log(store: &MemoryStore) -> Vec<(String, String, String)> {
        let all = store.changes(MAX_CHANGES).await.unwrap();
        all.into_iter().rev().map(|c| (c.who, c.action, c.target)).collect()
    }

    fn entry(action: &str, target: &str) -> (String, String, String) {
        ("tester".into(), action.into(), target.into())
    }

    #[tokio::test]
    async fn every_write_records_its_audit_entry() {
        let (store, admin) = service();
        let skl = MachineType::new("skl", vec!["cpu:skylake".into()], MatchMode::Exact).unwrap();
        admin.put_machine_type(skl).await.unwrap();
        admin.put_machine_type(MachineType::new("zen", vec![], MatchMode::Best).unwrap()).await.unwrap();
        let mut limited = new_account("n1", "skl", "long enough");
        limited.repositories = vec!["org/".into()];
        let account = admin.put_account(limited).await.unwrap();
        assert!(account.password_hash.expose_str().starts_with("$argon2id$"));
        admin.rotate_password(&login("n1"), NewPassword::Plain("another one".into())).await.unwrap();
        let moved = admin.move_account(&login("n1"), name("zen")).await.unwrap();
        assert_eq!((moved.machine_type.as_str(), moved.repositories.len()), ("zen", 1), "the other fields are kept");
        admin.delete_account(&login("n1")).await.unwrap();
        admin.delete_machine_type(&name("skl")).await.unwrap();
        assert_eq!(
            log(&store).await,
            [
                entry("put-machine-type", "skl [cpu:skylake] exact"),
                entry("put-machine-type", "zen [] best"),
                entry("put-account", "n1 machineType=skl repositories=org/"),
                entry("rotate-password", "n1"),
                entry("put-account", "n1 machineType=zen"),
                entry("delete-account", "n1"),
                entry("delete-machine-type", "skl"),
            ]
        );
        assert_eq!(admin.changes(2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn refused_writes_write_and_record_nothing() {
        let (store, admin) = service();
        let missing_type = admin.put_account(new_account("n1", "nope", "long enough")).await.unwrap_err();
        assert_eq!(missing_type.code, ErrorCode::NameUnknown);
        admin.put_machine_type(MachineType::new("skl", vec![], MatchMode::Best).unwrap()).await.unwrap();
        let short = admin.put_account(new_account("n1", "skl", "short")).await.unwrap_err();
        assert_eq!((short.code, short.message.as_str()), (ErrorCode::Invalid, "password must be 8 to 1024 characters"));
        let mut bad_prefix = new_account("n1", "skl", "long enough");
        bad_prefix.repositories = vec!["Org//".into()];
        assert_eq!(admin.put_account(bad_prefix).await.unwrap_err().code, ErrorCode::NameInvalid);
        let bad_hash = NewAccount { password: NewPassword::Hash("plain text".into()), ..new_account("n1", "skl", "") };
        assert!(admin.put_account(bad_hash).await.unwrap_err().message.contains("passwordHash"));
        let unknown = admin.account(&login("n1")).await.unwrap_err();
        assert_eq!((unknown.code, unknown.detail), (ErrorCode::NameUnknown, Some(serde_json::json!({"login": "n1"}))));
        for e in [
            admin.delete_account(&login("n1")).await.unwrap_err(),
            admin.delete_machine_type(&name("zen")).await.unwrap_err(),
            admin.rotate_password(&login("n1"), NewPassword::Plain("long enough".into())).await.unwrap_err(),
            admin.move_account(&login("n1"), name("skl")).await.unwrap_err(),
        ] {
            assert_eq!(e.code, ErrorCode::NameUnknown, "{e}");
        }
        admin.put_account(new_account("n1", "skl", "long enough")).await.unwrap();
        let in_use = admin.delete_machine_type(&name("skl")).await.unwrap_err();
        assert!(in_use.code == ErrorCode::Denied && in_use.message.contains("n1"), "{in_use}");
        for limit in [0, MAX_CHANGES + 1] {
            assert_eq!(admin.changes(limit).await.unwrap_err().code, ErrorCode::Invalid);
        }
        let actions: Vec<_> = log(&store).await.into_iter().map(|(_, action, _)| action).collect();
        assert_eq!(actions, ["put-machine-type", "put-account"], "only the writes that happened");
    }

    #[test]
    fn a_password_is_given_one_way() {
        assert!(matches!(NewPassword::from_fields(Some("p".into()), None), Ok(NewPassword::Plain(_))));
        assert!(matches!(NewPassword::from_fields(None, Some("h".into())), Ok(NewPassword::Hash(_))));
        let both = NewPassword::from_fields(Some("p".into()), Some("h".into())).unwrap_err();
        assert!(both.message.contains("not both"));
        assert_eq!(NewPassword::from_fields(None, None).unwrap_err().code, ErrorCode::Invalid);
        let shown = format!("{:?}", NewPassword::Plain("hunter22".into()));
        assert!(!shown.contains("hunter22"), "{shown}");
    }

    #[tokio::test]
    async fn watched_images_are_normalised_and_recorded_once() {
        let (store, admin) = service();
        let image = |text: &str| parse_watched_image(text).unwrap();
        assert_eq!(admin.watch_image(&image(" org/app ")).await.unwrap(), ("org/app:latest".into(), true));
        assert_eq!(admin.watch_image(&image("org/app:latest")).await.unwrap(), ("org/app:latest".into(), false));
        assert_eq!(parse_watched_image("<script>").unwrap_err().code, ErrorCode::NameInvalid);
        admin.unwatch_image(&image("org/app")).await.unwrap();
        assert_eq!(admin.unwatch_image(&image("org/app")).await.unwrap_err().code, ErrorCode::NameUnknown);
        assert_eq!(
            log(&store).await,
            [entry("watch-image", "org/app:latest"), entry("unwatch-image", "org/app:latest")]
        );
    }
}
