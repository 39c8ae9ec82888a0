//! The ports: what the domain needs from a store and from an upstream registry. Adapters implement them; the
//! domain and the transports only ever see these traits.

use crate::error::Result;
use crate::filter::Platform;
use crate::machine::{MachineType, MachineTypeName};
use crate::names::Login;
use crate::reference::{Digest, Reference, RepositoryName};
use crate::secret::Secret;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A login and the machine type it pulls as. The hash is an argon2id PHC string, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub login: Login,
    pub machine_type: MachineTypeName,
    #[serde(serialize_with = "crate::secret::serialize_exposed")]
    pub password_hash: Secret<String>,
    /// Repository prefixes the account may pull (`org/`, `org/app`); empty: every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

impl Account {
    /// The account as the CLI's `--json` and the admin API show it: never the hash; `repositories` only when set.
    pub fn to_json(&self) -> serde_json::Value {
        let mut view = serde_json::json!({"login": self.login, "machineType": self.machine_type});
        if !self.repositories.is_empty() {
            view["repositories"] = serde_json::json!(self.repositories);
        }
        view
    }

    /// Whether the account may pull `repository`: no list, or a prefix of the list that ends at a path boundary.
    pub fn may_pull(&self, repository: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|p| repository_matches(p, repository))
    }
}

/// Refuses a repository prefix that is not a repository name, or one followed by `/`.
pub fn validate_repository_prefix(prefix: &str) -> Result<()> {
    prefix.strip_suffix('/').unwrap_or(prefix).parse::<RepositoryName>().map(|_| ()).map_err(|e| {
        crate::Error::new(
            crate::ErrorCode::NameInvalid,
            format!("repository prefix {prefix:?} must be a repository name, optionally ending in /: {}", e.message),
        )
    })
}

/// `org/` matches `org/app`; `org/app` matches `org/app` and `org/app/sub`, never `org/application`.
fn repository_matches(prefix: &str, repository: &str) -> bool {
    match repository.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// One field of an existing account to change, with the others left as they are when the change is written (not as
/// they were read earlier: a password rotation must not revert a concurrent move to another machine type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// A new argon2id PHC string.
    PasswordHash(Secret<String>),
    /// Another machine type, which must exist.
    MachineType(MachineTypeName),
}

impl AccountChange {
    /// `account` with the change applied, for stores that apply it inside their own transaction.
    pub fn apply(&self, mut account: Account) -> Account {
        match self {
            AccountChange::PasswordHash(hash) => account.password_hash = hash.clone(),
            AccountChange::MachineType(name) => account.machine_type = name.clone(),
        }
        account
    }
}

/// One administrative change, as the audit log keeps it: who did what to which target, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Unix time, seconds.
    pub at: u64,
    /// The authenticated principal: an IAM ARN, `admin-secret`, or `cli:<user>` for the CLI on the store directly.
    pub who: String,
    /// What was done, e.g. `put-machine-type`, `delete-account`, `rotate-password`.
    pub action: String,
    /// The machine type name or login it was done to, with the new value where it is not secret.
    pub target: String,
}

impl Change {
    /// When, as RFC 3339 UTC to the second.
    pub fn time(&self) -> String {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.at);
        humantime::format_rfc3339_seconds(at).to_string()
    }

    /// `{"at","time","who","action","target"}`, as the admin API and the CLI's `--json` show a change.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "at": self.at,
            "time": self.time(),
            "who": self.who,
            "action": self.action,
            "target": self.target,
        })
    }
}

/// A manifest's exact bytes, digest and media type.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What MetaHub read of a child manifest in an upstream index: the platform the index lists it under (what running
/// it requires) and that index. Kept by (repository, child digest), so that a pull of the child by its digest is
/// judged on any instance, and the refusal can name the caller's own build of the same index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRecord {
    pub digest: Digest,
    pub platform: Platform,
    pub index: Digest,
}

#[derive(Deserialize)]
struct StoredChild {
    platform: Platform,
    index: String,
}

impl ChildRecord {
    /// How the stores keep everything but the key: `{"platform":{…},"index":"sha256:…"}`.
    pub fn value_json(&self) -> String {
        serde_json::json!({"platform": self.platform, "index": self.index.as_str()}).to_string()
    }

    /// A record as a store holds it, naming the item when it is malformed.
    pub fn from_value_json(digest: Digest, text: &str) -> Result<ChildRecord> {
        let malformed =
            |why: String| crate::Error::internal(format!("stored child record of {digest} is malformed: {why}"));
        let stored: StoredChild = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let index = stored.index.parse().map_err(|e: crate::Error| malformed(e.message))?;
        Ok(ChildRecord { digest, platform: stored.platform, index })
    }
}

/// What a HEAD of a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// Where a client fetches a blob without MetaHub's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub url: String,
}

/// One page of a repository's tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagPage {
    pub tags: Vec<String>,
    /// When the upstream has more: the `last` to ask the next page with.
    pub next_last: Option<String>,
}

/// The descriptors of the manifests that refer to a subject (distribution-spec 1.1 referrers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Referrers {
    /// Descriptors as the upstream wrote them (`mediaType`, `digest`, `size`, `artifactType`, `annotations`, …).
    pub manifests: Vec<serde_json::Value>,
    /// Whether the `artifactType` filter was already applied (the upstream's `OCI-Filters-Applied`).
    pub artifact_type_filtered: bool,
}

/// The refusal every store gives for deleting a machine type that accounts still use.
pub fn machine_type_in_use(machine_type: &MachineTypeName, mut accounts: Vec<Login>) -> crate::Error {
    accounts.sort();
    accounts.dedup();
    crate::Error::denied(format!(
        "machine type {machine_type:?} is used by {} account(s): {}; delete them or move them to another machine type first",
        accounts.len(),
        accounts.iter().map(Login::as_str).collect::<Vec<_>>().join(", ")
    ))
    .with_detail(serde_json::json!({"machineType": machine_type, "accounts": accounts}))
}

/// The refusal every store gives for an account whose machine type does not exist.
pub fn machine_type_missing(machine_type: &MachineTypeName) -> crate::Error {
    crate::Error::new(
        crate::ErrorCode::NameUnknown,
        format!("machine type {machine_type:?} does not exist; create it first with `metahub machine-type put`"),
    )
    .with_detail(serde_json::json!({"machineType": machine_type}))
}

/// Persistent state: machine types, accounts, generated indexes, the token signing key.
///
/// Every method answers a registry error on failure (`UNAVAILABLE` when the store cannot be reached).
#[async_trait]
pub trait Store: Send + Sync {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<Option<MachineType>>;
    /// Creates or replaces a machine type.
    async fn put_machine_type(&self, machine_type: &MachineType) -> Result<()>;
    async fn list_machine_types(&self) -> Result<Vec<MachineType>>;
    /// Deletes a machine type; refused with `DENIED` naming the accounts when any still use it. `Ok(false)` when absent.
    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<bool>;

    async fn account(&self, login: &Login) -> Result<Option<Account>>;
    /// Creates or replaces an account; refused when its machine type does not exist.
    async fn put_account(&self, account: &Account) -> Result<()>;
    async fn list_accounts(&self) -> Result<Vec<Account>>;
    async fn delete_account(&self, login: &Login) -> Result<bool>;
    /// Changes one field of an existing account in one atomic write, keeping whatever the other fields hold at that
    /// moment; the account as written, or `Ok(None)` when there is no such account. A missing machine type is
    /// refused as by `put_account`.
    async fn update_account(&self, login: &Login, change: &AccountChange) -> Result<Option<Account>>;

    /// A filtered index MetaHub generated for `repository`, by its digest.
    async fn generated_manifest(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>>;
    async fn put_generated_manifest(&self, repository: &RepositoryName, manifest: &Manifest) -> Result<()>;

    /// What MetaHub read of a child manifest of `repository` in an upstream index.
    async fn child_record(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<ChildRecord>>;
    /// Keeps the records of an upstream index's children (a later record of the same child replaces it); they live
    /// as long as a generated index does.
    async fn put_child_records(&self, repository: &RepositoryName, records: &[ChildRecord]) -> Result<()>;

    /// The token signing key: the stored one, or `candidate` stored atomically when there is none yet.
    async fn signing_key_or_insert(&self, candidate: &[u8]) -> Result<Vec<u8>>;

    /// Appends one change to the audit log.
    async fn record_change(&self, change: &Change) -> Result<()>;
    /// The newest `limit` changes of the audit log, newest first.
    async fn changes(&self, limit: usize) -> Result<Vec<Change>>;

    /// The images operators watch on the admin page (references as `ImageRef` prints them), sorted. Kept in the
    /// store, not in a browser, so that every operator and every session sees the same list.
    async fn watched_images(&self) -> Result<Vec<String>>;
    /// Adds an image to the watched list; `Ok(false)` when it was already there.
    async fn watch_image(&self, image: &str) -> Result<bool>;
    /// Removes an image from the watched list; `Ok(false)` when it was not there.
    async fn unwatch_image(&self, image: &str) -> Result<bool>;
}

/// An upstream registry, reached only for names the configuration routes to it.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// HEAD a manifest: its digest and media type, without counting against pull rate limits.
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead>;
    /// GET a manifest's exact bytes. Implementations verify the digest when fetched by digest.
    async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest>;
    /// Where the client fetches a blob: the upstream's presigned storage URL when it redirects, else its blob URL.
    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation>;

    /// A page of `repository`'s tags: at most `n`, after `last` (tags/list pagination).
    async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        let _ = (n, last);
        Err(crate::Error::new(crate::ErrorCode::Unsupported, format!("tags of {repository} cannot be listed")))
    }

    /// The upstream's referrers API answer for `digest`; `Ok(None)` when the upstream has no referrers API (it
    /// answers 404), so that the caller falls back to the `<alg>-<hex>` tag scheme.
    async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        let _ = (repository, digest, artifact_type);
        Ok(None)
    }

    /// The name `name` of registry `host` goes by here (`?ns=<host>` of containerd mirrors): `host/name` when an
    /// upstream is configured under that prefix or on that host. Any other host is refused (`DENIED`), never fetched.
    fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        let _ = name;
        Err(crate::Error::denied(format!("MetaHub mirrors no registry {host:?} (ns)")))
    }
}
