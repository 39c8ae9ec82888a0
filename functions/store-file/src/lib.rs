//! MetaHub's embedded store: one [redb](https://docs.rs/redb) file with four tables, values as JSON.
//!
//! | table           | key                | value                                   |
//! |-----------------|--------------------|-----------------------------------------|
//! | `machine_types` | name               | JSON `{"name","features","match"}`       |
//! | `accounts`      | login              | JSON `{"login","machine_type","password_hash"}` |
//! | `manifests`     | `<repo>@<digest>`  | (media type, exact bytes)               |
//! | `meta`          | `signing_key`      | key bytes                               |
//! | `changes`       | sequence number    | JSON `{"at","who","action","target"}` (the audit log) |
//! | `gpu_requirements` | child manifest digest | JSON `{"expressions":[…]}`: its config's `NVIDIA_REQUIRE_*` (at most [`MAX_GPU_REQUIREMENTS`]) |
//! | `revoked_sessions` | admin page session id | its expiry, Unix seconds (signed-out sessions)     |
//!
//! The file is opened in redb's multi-writer mode, so `metahub machine-type put --store file:X` works while
//! `metahub serve --store file:X` has the same file open: every process takes the file's write lock per
//! transaction and sees the others' commits. The invariants (an account's machine type exists; a machine type in use
//! is not deleted; one signing key) are each checked and written in a single write transaction, and redb runs one
//! write transaction at a time across all processes, so no race can break them.

use async_trait::async_trait;
use bytes::Bytes;
use metahub_core::machine::{MachineType, MachineTypeName};
use metahub_core::names::Login;
use metahub_core::nvidia::Requirements;
use metahub_core::ports::{
    Account, AccountChange, Change, ChildRecord, Manifest, Store, machine_type_in_use, machine_type_missing,
};
use metahub_core::reference::{Digest, RepositoryName};
use metahub_core::{Error, Result};
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MACHINE_TYPES: TableDefinition<&str, &str> = TableDefinition::new("machine_types");
const ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("accounts");
const MANIFESTS: TableDefinition<&str, (&str, &[u8])> = TableDefinition::new("manifests");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The children of upstream indexes MetaHub read, by `repository@digest`: `ChildRecord::value_json`.
const CHILDREN: TableDefinition<&str, &str> = TableDefinition::new("child_records");
/// The audit log, keyed by a sequence number taken in the appending transaction: newest is last, even within a second.
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
/// The admin page's watched images, by reference; the value is unused.
const WATCHED: TableDefinition<&str, ()> = TableDefinition::new("watched_images");
/// Admin page sessions signed out before their expiry: session id → expiry (Unix seconds), after which it is dropped.
const REVOKED_SESSIONS: TableDefinition<&str, u64> = TableDefinition::new("revoked_sessions");
const SIGNING_KEY: &str = "signing_key";
/// The NVIDIA requirements read from each child's config, by child manifest digest.
const GPU: TableDefinition<&str, &str> = TableDefinition::new("gpu_requirements");
/// Children whose requirements the file keeps at most; past it, one kept entry (the first by digest: any) makes room.
/// Forgotten ones are read again from their config when needed.
pub const MAX_GPU_REQUIREMENTS: u64 = 100_000;

/// redb's page cache defaults to 1 GiB; the store holds kilobytes to a few megabytes.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The embedded store. Cheap to clone; clones share the open file.
#[derive(Clone)]
pub struct FileStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("path", &self.path).finish()
    }
}

impl FileStore {
    /// Opens the store at `path`, creating the parent directories (0700) and the file (0600) when missing. The file
    /// holds the token signing key and the password hashes: an existing one that other users may read is refused.
    pub fn open(path: &Path) -> Result<FileStore> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_dir_builder().create(parent).map_err(|e| {
                Error::unavailable(format!("store file {shown}: cannot create directory {}: {e}", parent.display()))
            })?;
        }
        metahub_core::files::refuse_shared(path, "store file")?;
        // redb initialises an empty file as a new store: create it owner-only first, whatever the umask.
        private_file_options()
            .open(path)
            .map_err(|e| Error::unavailable(format!("store file {shown} cannot be created: {e}")))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => Error::unavailable(format!(
                    "store file {shown} is in use by another metahub process (or another redb version); stop it or use another --store"
                )),
                DatabaseError::UpgradeRequired(v) => {
                    Error::unavailable(format!("store file {shown} has an old file format ({v}) that must be upgraded"))
                }
                other => Error::unavailable(format!("store file {shown} cannot be opened: {other}")),
            })?;
        let store = FileStore { db: Arc::new(db), path: Arc::new(path.to_owned()) };
        // Create every table once, so read transactions never meet a missing one.
        let txn = store.db.begin_write().map_err(|e| store.fail(e))?;
        for table in [MACHINE_TYPES, ACCOUNTS] {
            txn.open_table(table).map_err(|e| store.fail(e))?;
        }
        txn.open_table(MANIFESTS).map_err(|e| store.fail(e))?;
        txn.open_table(META).map_err(|e| store.fail(e))?;
        txn.open_table(CHILDREN).map_err(|e| store.fail(e))?;
        txn.open_table(CHANGES).map_err(|e| store.fail(e))?;
        txn.open_table(WATCHED).map_err(|e| store.fail(e))?;
        txn.open_table(GPU).map_err(|e| store.fail(e))?;
        txn.open_table(REVOKED_SESSIONS).map_err(|e| store.fail(e))?;
        txn.commit().map_err(|e| store.fail(e))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a machine type's stored JSON as is, bypassing validation: only for tests of malformed items.
    #[cfg(feature = "testing")]
    pub fn put_raw_machine_type(&self, name: &str, json: &str) -> Result<()> {
        self.write(|txn| {
            let mut table = txn.open_table(MACHINE_TYPES).map_err(|e| self.fail(e))?;
            table.insert(name, json).map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    fn fail(&self, e: impl Display) -> Error {
        Error::unavailable(format!("store file {}: {e}", self.path.display()))
    }

    /// Runs `f` on the blocking pool: redb calls do file I/O and every commit fsyncs, which must not stall the
    /// async workers serving other requests.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&FileStore) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::internal(format!("store file {}: task failed: {e}", self.path.display())))?
    }

    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let out = f(&txn)?; // dropping an uncommitted transaction aborts it
        txn.commit().map_err(|e| self.fail(e))?;
        Ok(out)
    }

    fn decode_machine_type(name: &str, json: &str) -> Result<MachineType> {
        let malformed = |why: String| Error::internal(format!("stored machine type {name:?} is malformed: {why}"));
        let mt: MachineType = serde_json::from_str(json).map_err(|e| malformed(e.to_string()))?;
        if mt.name().as_str() != name {
            return Err(malformed(format!("its name field is {:?}", mt.name().as_str())));
        }
        Ok(mt) // the name and features were validated as they were read
    }

    fn decode_account(login: &str, json: &str) -> Result<Account> {
        let account: Account = serde_json::from_str(json)
            .map_err(|e| Error::internal(format!("stored account {login:?} is malformed: {e}")))?;
        if account.login.as_str() != login {
            return Err(Error::internal(format!(
                "stored account {login:?} is malformed: its login field is {:?}",
                account.login.as_str()
            )));
        }
        Ok(account)
    }
}

/// Creates directories (parents included) accessible by their owner only.
fn private_dir_builder() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

/// Opens a file for writing, creating it readable and writable by its owner only when missing.
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn manifest_key(repository: &RepositoryName, digest: &Digest) -> String {
    format!("{}@{}", repository.as_str(), digest.as_str())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("encoding a store value: {e}")))
}

/// Logins of the accounts using `machine_type`, sorted. A scan: accounts number in the tens to hundreds, and this
/// runs only when a machine type is deleted.
fn accounts_using(store: &FileStore, txn: &WriteTransaction, machine_type: &MachineTypeName) -> Result<Vec<Login>> {
    let table = txn.open_table(ACCOUNTS).map_err(|e| store.fail(e))?;
    let mut users = Vec::new();
    for entry in table.iter().map_err(|e| store.fail(e))? {
        let (k, v) = entry.map_err(|e| store.fail(e))?;
        let account = FileStore::decode_account(k.value(), v.value())?;
        if account.machine_type == *machine_type {
            users.push(account.login);
        }
    }
    users.sort();
    Ok(users)
}

#[async_trait]
impl Store for FileStore {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<Option<MachineType>> {
        let name = name.to_string();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
            let value = table.get(name.as_str()).map_err(|e| s.fail(e))?;
            value.map(|v| FileStore::decode_machine_type(&name, v.value())).transpose()
        })
        .await
    }

    async fn put_machine_type(&self, mt: &MachineType) -> Result<()> {
        let json = to_json(mt)?;
        let mt = mt.clone();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
                table.insert(mt.name().as_str(), json.as_str()).map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn list_machine_types(&self) -> Result<Vec<MachineType>> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
            let mut out = Vec::new();
            // redb iterates keys in byte order, which is the name order.
            for entry in table.iter().map_err(|e| s.fail(e))? {
                let (k, v) = entry.map_err(|e| s.fail(e))?;
                out.push(FileStore::decode_machine_type(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<bool> {
        let name = name.clone();
        self.blocking(move |s| {
            s.write(|txn| {
                let users = accounts_using(s, txn, &name)?;
                if !users.is_empty() {
                    return Err(machine_type_in_use(&name, users));
                }
                let mut table = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
                let removed = table.remove(name.as_str()).map_err(|e| s.fail(e))?.is_some();
                Ok(removed)
            })
        })
        .await
    }

    async fn account(&self, login: &Login) -> Result<Option<Account>> {
        let login = login.to_string();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(ACCOUNTS).map_err(|e| s.fail(e))?;
            let value = table.get(login.as_str()).map_err(|e| s.fail(e))?;
            value.map(|v| FileStore::decode_account(&login, v.value())).transpose()
        })
        .await
    }

    async fn put_account(&self, account: &Account) -> Result<()> {
        let json = to_json(account)?;
        let account = account.clone();
        self.blocking(move |s| {
            s.write(|txn| {
                // Checked in the same transaction as the insert: a concurrent delete cannot slip in between.
                let types = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
                if types.get(account.machine_type.as_str()).map_err(|e| s.fail(e))?.is_none() {
                    return Err(machine_type_missing(&account.machine_type));
                }
                let mut table = txn.open_table(ACCOUNTS).map_err(|e| s.fail(e))?;
                table.insert(account.login.as_str(), json.as_str()).map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(ACCOUNTS).map_err(|e| s.fail(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| s.fail(e))? {
                let (k, v) = entry.map_err(|e| s.fail(e))?;
                out.push(FileStore::decode_account(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_account(&self, login: &Login) -> Result<bool> {
        let login = login.to_string();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(ACCOUNTS).map_err(|e| s.fail(e))?;
                let removed = table.remove(login.as_str()).map_err(|e| s.fail(e))?.is_some();
                Ok(removed)
            })
        })
        .await
    }

    async fn update_account(&self, login: &Login, change: &AccountChange) -> Result<Option<Account>> {
        let (login, change) = (login.to_string(), change.clone());
        self.blocking(move |s| {
            // Read, change and write in one write transaction: no other write can come in between.
            s.write(|txn| {
                let mut table = txn.open_table(ACCOUNTS).map_err(|e| s.fail(e))?;
                let current = table.get(login.as_str()).map_err(|e| s.fail(e))?;
                let Some(current) = current.map(|v| FileStore::decode_account(&login, v.value())).transpose()? else {
                    return Ok(None);
                };
                let updated = change.apply(current);
                if let AccountChange::MachineType(name) = &change {
                    let types = txn.open_table(MACHINE_TYPES).map_err(|e| s.fail(e))?;
                    if types.get(name.as_str()).map_err(|e| s.fail(e))?.is_none() {
                        return Err(machine_type_missing(name));
                    }
                }
                table.insert(login.as_str(), to_json(&updated)?.as_str()).map_err(|e| s.fail(e))?;
                Ok(Some(updated))
            })
        })
        .await
    }

    async fn generated_manifest(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>> {
        let key = manifest_key(repository, digest);
        let digest = digest.clone();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(MANIFESTS).map_err(|e| s.fail(e))?;
            let Some(value) = table.get(key.as_str()).map_err(|e| s.fail(e))? else {
                return Ok(None);
            };
            let (media_type, bytes) = value.value();
            if !digest.verifies(bytes) {
                return Err(Error::internal(format!("stored manifest {key} does not match its digest")));
            }
            Ok(Some(Manifest { digest, media_type: media_type.to_owned(), bytes: Bytes::copy_from_slice(bytes) }))
        })
        .await
    }

    async fn put_generated_manifest(&self, repository: &RepositoryName, manifest: &Manifest) -> Result<()> {
        check_manifest(manifest)?;
        let key = manifest_key(repository, &manifest.digest);
        let manifest = manifest.clone();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(MANIFESTS).map_err(|e| s.fail(e))?;
                table
                    .insert(key.as_str(), (manifest.media_type.as_str(), &manifest.bytes[..]))
                    .map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn child_record(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<ChildRecord>> {
        let key = manifest_key(repository, digest);
        let digest = digest.clone();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(CHILDREN).map_err(|e| s.fail(e))?;
            let Some(value) = table.get(key.as_str()).map_err(|e| s.fail(e))? else {
                return Ok(None);
            };
            ChildRecord::from_value_json(digest, value.value()).map(Some)
        })
        .await
    }

    async fn put_child_records(&self, repository: &RepositoryName, records: &[ChildRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String)> =
            records.iter().map(|r| (manifest_key(repository, &r.digest), r.value_json())).collect();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(CHILDREN).map_err(|e| s.fail(e))?;
                for (key, value) in &rows {
                    table.insert(key.as_str(), value.as_str()).map_err(|e| s.fail(e))?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn signing_key_or_insert(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        // Fast path without the write lock: the key exists on every call but the very first.
        let existing = self
            .blocking(|s| {
                let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
                let table = txn.open_table(META).map_err(|e| s.fail(e))?;
                Ok(table.get(SIGNING_KEY).map_err(|e| s.fail(e))?.map(|v| v.value().to_vec()))
            })
            .await?;
        if let Some(key) = existing {
            return Ok(key);
        }
        let candidate = candidate.to_vec();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(META).map_err(|e| s.fail(e))?;
                if let Some(key) = table.get(SIGNING_KEY).map_err(|e| s.fail(e))? {
                    return Ok(key.value().to_vec());
                }
                table.insert(SIGNING_KEY, candidate.as_slice()).map_err(|e| s.fail(e))?;
                Ok(candidate)
            })
        })
        .await
    }

    async fn record_change(&self, change: &Change) -> Result<()> {
        let json = to_json(change)?;
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(CHANGES).map_err(|e| s.fail(e))?;
                let next = table.last().map_err(|e| s.fail(e))?.map_or(0, |(k, _)| k.value() + 1);
                table.insert(next, json.as_str()).map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(CHANGES).map_err(|e| s.fail(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| s.fail(e))?.rev().take(limit) {
                let (k, v) = entry.map_err(|e| s.fail(e))?;
                let change = serde_json::from_str(v.value())
                    .map_err(|e| Error::internal(format!("stored change {} is malformed: {e}", k.value())))?;
                out.push(change);
            }
            Ok(out)
        })
        .await
    }

    async fn watched_images(&self) -> Result<Vec<String>> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(WATCHED).map_err(|e| s.fail(e))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| s.fail(e))? {
                out.push(entry.map_err(|e| s.fail(e))?.0.value().to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn watch_image(&self, image: &str) -> Result<bool> {
        let image = image.to_owned();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(WATCHED).map_err(|e| s.fail(e))?;
                Ok(table.insert(image.as_str(), ()).map_err(|e| s.fail(e))?.is_none())
            })
        })
        .await
    }

    async fn gpu_requirements(&self, digest: &Digest) -> Result<Option<Requirements>> {
        let key = digest.to_string();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(GPU).map_err(|e| s.fail(e))?;
            let Some(value) = table.get(key.as_str()).map_err(|e| s.fail(e))? else { return Ok(None) };
            serde_json::from_str(value.value())
                .map(Some)
                .map_err(|e| Error::internal(format!("stored NVIDIA requirements of {key} are malformed: {e}")))
        })
        .await
    }

    async fn put_gpu_requirements(&self, digest: &Digest, requirements: &Requirements) -> Result<()> {
        let key = digest.to_string();
        let json = to_json(requirements)?;
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(GPU).map_err(|e| s.fail(e))?;
                if table.len().map_err(|e| s.fail(e))? >= MAX_GPU_REQUIREMENTS {
                    let first = table.first().map_err(|e| s.fail(e))?.map(|(k, _)| k.value().to_owned());
                    if let Some(first) = first {
                        table.remove(first.as_str()).map_err(|e| s.fail(e))?;
                    }
                }
                table.insert(key.as_str(), json.as_str()).map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn unwatch_image(&self, image: &str) -> Result<bool> {
        let image = image.to_owned();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(WATCHED).map_err(|e| s.fail(e))?;
                Ok(table.remove(image.as_str()).map_err(|e| s.fail(e))?.is_some())
            })
        })
        .await
    }

    async fn revoke_session(&self, id: &str, expires_at: u64) -> Result<()> {
        let id = id.to_owned();
        self.blocking(move |s| {
            s.write(|txn| {
                let mut table = txn.open_table(REVOKED_SESSIONS).map_err(|e| s.fail(e))?;
                // Sessions past their expiry need no record: their cookies are refused anyway.
                let now = metahub_core::token::now_seconds();
                table.retain(|_, until| until > now).map_err(|e| s.fail(e))?;
                table.insert(id.as_str(), expires_at).map_err(|e| s.fail(e))?;
                Ok(())
            })
        })
        .await
    }

    async fn session_revoked(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(|e| s.fail(e))?;
            let table = txn.open_table(REVOKED_SESSIONS).map_err(|e| s.fail(e))?;
            Ok(table.get(id.as_str()).map_err(|e| s.fail(e))?.is_some())
        })
        .await
    }
}

/// A generated manifest must be stored under its own digest.
fn check_manifest(manifest: &Manifest) -> Result<()> {
    if manifest.digest.verifies(&manifest.bytes) {
        Ok(())
    } else {
        Err(Error::internal(format!("manifest bytes do not match digest {}", manifest.digest)))
    }
}

#[cfg(test)]
mod change_tests {
    use super::*;

    #[tokio::test]
    async fn changes_are_kept_newest_first_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let change = |i: u64| Change {
            at: 1_700_000_000,
            who: "admin-secret".into(),
            action: "put-machine-type".into(),
            target: format!("t{i}"),
        };
        {
            let store = FileStore::open(&path).unwrap();
            assert!(store.changes(10).await.unwrap().is_empty());
            for i in 0..3 {
                store.record_change(&change(i)).await.unwrap();
            }
        }
        let store = FileStore::open(&path).unwrap();
        store.record_change(&change(3)).await.unwrap();
        let targets: Vec<String> = store.changes(3).await.unwrap().into_iter().map(|c| c.target).collect();
        assert_eq!(targets, ["t3", "t2", "t1"]);
        assert_eq!(store.changes(100).await.unwrap().len(), 4);
    }
}

#[cfg(all(test, unix))]
mod permission_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_and_its_directory_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/store.redb");
        FileStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new/sub")), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
    }

    #[tokio::test]
    async fn a_store_others_may_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let key = FileStore::open(&path).unwrap().signing_key_or_insert(&[7; 32]).await.unwrap();
        for shared in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(shared)).unwrap();
            let e = FileStore::open(&path).unwrap_err();
            assert!(e.message.contains(&format!("chmod 600 {}", path.display())), "{}", e.message);
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let reopened = FileStore::open(&path).unwrap();
        assert_eq!(reopened.signing_key_or_insert(&[9; 32]).await.unwrap(), key, "the fix loses nothing");
    }
}
