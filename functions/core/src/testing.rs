//! Test doubles for the ports, shared by every crate's tests (feature `testing`): [`MemoryStore`], a complete
//! in-memory [`Store`] that passes the same [`conformance`] suite as the real stores, and [`FakeUpstream`], a
//! scripted upstream that counts its calls (a spy, as distribution's proxy tests use).

pub mod conformance;

use crate::error::{Error, ErrorCode, Result};
use crate::machine::{MachineType, MachineTypeName};
use crate::names::Login;
use crate::nvidia::Requirements;
use crate::ports::{
    Account, AccountChange, BlobLocation, Change, ChildRecord, Manifest, ManifestHead, Store, Upstream,
    machine_type_in_use, machine_type_missing,
};
use crate::reference::{Digest, Reference, RepositoryName};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Every store method under one lock, so that each write is atomic as the conformance suite demands.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    machine_types: BTreeMap<MachineTypeName, MachineType>,
    accounts: BTreeMap<Login, Account>,
    generated: HashMap<(RepositoryName, Digest), Manifest>,
    children: HashMap<(RepositoryName, Digest), ChildRecord>,
    signing_key: Option<Vec<u8>>,
    changes: Vec<Change>,
    watched: BTreeSet<String>,
    gpu: HashMap<Digest, Requirements>,
    revoked_sessions: HashMap<String, u64>,
}

impl MemoryStore {
    fn state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `machine_type` as is, bypassing validation, as an operator's hand-typed item could be.
    pub fn put_unvalidated_machine_type(&self, machine_type: MachineType) {
        self.state().machine_types.insert(machine_type.name.clone(), machine_type);
    }

    /// How many children's NVIDIA requirements are stored.
    pub fn gpu_requirements_count(&self) -> usize {
        self.state().gpu.len()
    }

    /// How many generated manifests are stored.
    pub fn generated_count(&self) -> usize {
        self.state().generated.len()
    }
}

/// A stored machine type, checked on the way out as the real stores do (their items are text; a test plants a
/// malformed one here with [`MemoryStore::put_unvalidated_machine_type`]).
fn checked(mt: &MachineType) -> Result<MachineType> {
    MachineType::stored(mt.name.as_str(), mt.features.texts(), mt.match_mode)
}

#[async_trait]
impl Store for MemoryStore {
    async fn machine_type(&self, name: &MachineTypeName) -> Result<Option<MachineType>> {
        self.state().machine_types.get(name).map(checked).transpose()
    }
    async fn put_machine_type(&self, machine_type: &MachineType) -> Result<()> {
        self.state().machine_types.insert(machine_type.name.clone(), machine_type.clone());
        Ok(())
    }
    async fn list_machine_types(&self) -> Result<Vec<MachineType>> {
        self.state().machine_types.values().map(checked).collect()
    }
    async fn delete_machine_type(&self, name: &MachineTypeName) -> Result<bool> {
        let mut state = self.state();
        let users: Vec<Login> =
            state.accounts.values().filter(|a| a.machine_type == *name).map(|a| a.login.clone()).collect();
        if !users.is_empty() {
            return Err(machine_type_in_use(name, users));
        }
        Ok(state.machine_types.remove(name).is_some())
    }
    async fn account(&self, login: &Login) -> Result<Option<Account>> {
        Ok(self.state().accounts.get(login).cloned())
    }
    async fn put_account(&self, account: &Account) -> Result<()> {
        let mut state = self.state();
        if !state.machine_types.contains_key(&account.machine_type) {
            return Err(machine_type_missing(&account.machine_type));
        }
        state.accounts.insert(account.login.clone(), account.clone());
        Ok(())
    }
    async fn list_accounts(&self) -> Result<Vec<Account>> {
        Ok(self.state().accounts.values().cloned().collect())
    }
    async fn delete_account(&self, login: &Login) -> Result<bool> {
        Ok(self.state().accounts.remove(login).is_some())
    }
    async fn update_account(&self, login: &Login, change: &AccountChange) -> Result<Option<Account>> {
        let mut state = self.state();
        let Some(current) = state.accounts.get(login).cloned() else { return Ok(None) };
        if let AccountChange::MachineType(name) = change
            && !state.machine_types.contains_key(name)
        {
            return Err(machine_type_missing(name));
        }
        let updated = change.apply(current);
        state.accounts.insert(login.clone(), updated.clone());
        Ok(Some(updated))
    }
    async fn generated_manifest(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>> {
        Ok(self.state().generated.get(&(repository.clone(), digest.clone())).cloned())
    }
    async fn put_generated_manifest(&self, repository: &RepositoryName, manifest: &Manifest) -> Result<()> {
        if !manifest.digest.verifies(&manifest.bytes) {
            return Err(Error::internal(format!("generated manifest bytes do not hash to {}", manifest.digest)));
        }
        self.state().generated.insert((repository.clone(), manifest.digest.clone()), manifest.clone());
        Ok(())
    }
    async fn child_record(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<ChildRecord>> {
        Ok(self.state().children.get(&(repository.clone(), digest.clone())).cloned())
    }
    async fn put_child_records(&self, repository: &RepositoryName, records: &[ChildRecord]) -> Result<()> {
        let mut state = self.state();
        for record in records {
            state.children.insert((repository.clone(), record.digest.clone()), record.clone());
        }
        Ok(())
    }
    async fn gpu_requirements(&self, digest: &Digest) -> Result<Option<Requirements>> {
        Ok(self.state().gpu.get(digest).cloned())
    }
    async fn put_gpu_requirements(&self, digest: &Digest, requirements: &Requirements) -> Result<()> {
        self.state().gpu.insert(digest.clone(), requirements.clone());
        Ok(())
    }
    async fn signing_key_or_insert(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        Ok(self.state().signing_key.get_or_insert_with(|| candidate.to_vec()).clone())
    }
    async fn record_change(&self, change: &Change) -> Result<()> {
        self.state().changes.push(change.clone());
        Ok(())
    }
    async fn changes(&self, limit: usize) -> Result<Vec<Change>> {
        Ok(self.state().changes.iter().rev().take(limit).cloned().collect())
    }
    async fn watched_images(&self) -> Result<Vec<String>> {
        Ok(self.state().watched.iter().cloned().collect())
    }
    async fn watch_image(&self, image: &str) -> Result<bool> {
        Ok(self.state().watched.insert(image.to_owned()))
    }
    async fn unwatch_image(&self, image: &str) -> Result<bool> {
        Ok(self.state().watched.remove(image))
    }
    async fn revoke_session(&self, id: &str, expires_at: u64) -> Result<()> {
        let mut state = self.state();
        let now = crate::token::now_seconds();
        state.revoked_sessions.retain(|_, until| *until > now);
        state.revoked_sessions.insert(id.to_owned(), expires_at);
        Ok(())
    }
    async fn session_revoked(&self, id: &str) -> Result<bool> {
        Ok(self.state().revoked_sessions.contains_key(id))
    }
}

/// An upstream registry from a script: manifests under tags and digests, blobs at a storage URL. It counts the
/// calls that reach it, and can be taken down or made to announce digests it does not serve.
#[derive(Default)]
pub struct FakeUpstream {
    script: Mutex<Script>,
    down: AtomicBool,
    heads: AtomicUsize,
    gets: AtomicUsize,
    blob_calls: AtomicUsize,
    config_calls: AtomicUsize,
}

#[derive(Default)]
struct Script {
    tags: HashMap<(RepositoryName, String), Digest>,
    manifests: HashMap<Digest, Manifest>,
    blobs: HashSet<Digest>,
    /// Small blobs (configs) served with their bytes.
    small: HashMap<Digest, Bytes>,
    /// Announced by a tag's HEAD, but a GET answers `MANIFEST_UNKNOWN`.
    unserved: HashSet<Digest>,
    /// What a HEAD says the Content-Type is, instead of the manifest's own (registries may say `application/json`).
    head_media_type: Option<String>,
}

/// Where [`FakeUpstream`] sends blob requests.
pub const FAKE_STORAGE: &str = "https://storage.example";

impl FakeUpstream {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `bytes` by their digest; returns the manifest.
    pub fn put(&self, media_type: &str, bytes: impl Into<Bytes>) -> Manifest {
        let bytes = bytes.into();
        let manifest = Manifest { digest: Digest::sha256_of(&bytes), media_type: media_type.to_owned(), bytes };
        self.script().manifests.insert(manifest.digest.clone(), manifest.clone());
        manifest
    }

    /// Serves `bytes` under `digest`, whatever they hash to: a child that a fixture index lists by a made-up digest.
    pub fn put_at(&self, digest: Digest, media_type: &str, bytes: impl Into<Bytes>) -> Manifest {
        let manifest = Manifest { digest, media_type: media_type.to_owned(), bytes: bytes.into() };
        self.script().manifests.insert(manifest.digest.clone(), manifest.clone());
        manifest
    }

    /// Serves `bytes` by their digest and under `repository:tag`; returns the manifest.
    pub fn tag(&self, repository: &str, tag: &str, media_type: &str, bytes: impl Into<Bytes>) -> Manifest {
        let manifest = self.put(media_type, bytes);
        let repository: RepositoryName = repository.parse().expect("a repository name");
        self.script().tags.insert((repository, tag.to_owned()), manifest.digest.clone());
        manifest
    }

    /// Serves a blob of `content` (redirecting to [`FAKE_STORAGE`]); returns its digest.
    pub fn blob(&self, content: &[u8]) -> Digest {
        let digest = Digest::sha256_of(content);
        self.script().blobs.insert(digest.clone());
        digest
    }

    /// Serves a small blob (an image config) of `content`; returns its digest.
    pub fn config(&self, content: impl Into<Bytes>) -> Digest {
        let content = content.into();
        let digest = Digest::sha256_of(&content);
        self.script().small.insert(digest.clone(), content);
        digest
    }

    /// Small blob (config) reads that reached the upstream.
    pub fn config_calls(&self) -> usize {
        self.config_calls.load(Ordering::SeqCst)
    }

    /// From now on every call fails `UNAVAILABLE` (`true`), or is answered again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Tags keep announcing `digest`, but a GET of it answers `MANIFEST_UNKNOWN`.
    pub fn stop_serving(&self, digest: &Digest) {
        self.script().unserved.insert(digest.clone());
    }

    /// HEADs answer this Content-Type instead of the manifest's media type.
    pub fn set_head_media_type(&self, media_type: &str) {
        self.script().head_media_type = Some(media_type.to_owned());
    }

    /// HEADs of manifests that reached the upstream.
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    /// GETs of manifests that reached the upstream.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// Blob requests that reached the upstream.
    pub fn blob_calls(&self) -> usize {
        self.blob_calls.load(Ordering::SeqCst)
    }

    fn check_up(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::unavailable("upstream down"));
        }
        Ok(())
    }

    fn resolve(&self, repository: &RepositoryName, reference: &Reference) -> Result<Manifest> {
        let script = self.script();
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => script.tags.get(&(repository.clone(), t.as_str().to_owned())).cloned(),
        };
        digest
            .and_then(|d| script.manifests.get(&d).cloned())
            .ok_or_else(|| Error::manifest_unknown(format!("manifest {repository}:{reference} is unknown")))
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        _: &[String],
    ) -> Result<ManifestHead> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let manifest = self.resolve(repository, reference)?;
        let media_type = self.script().head_media_type.clone().unwrap_or(manifest.media_type);
        Ok(ManifestHead { digest: manifest.digest, media_type, size: manifest.bytes.len() as u64 })
    }
    async fn get_manifest(&self, repository: &RepositoryName, reference: &Reference, _: &[String]) -> Result<Manifest> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let manifest = self.resolve(repository, reference)?;
        if self.script().unserved.contains(&manifest.digest) {
            return Err(Error::manifest_unknown(format!("manifest {repository}@{} is unknown", manifest.digest)));
        }
        Ok(manifest)
    }
    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        self.blob_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        if !self.script().blobs.contains(digest) {
            return Err(Error::new(ErrorCode::BlobUnknown, format!("blob {repository}@{digest} is unknown")));
        }
        Ok(BlobLocation { url: format!("{FAKE_STORAGE}/{repository}/{digest}") })
    }
    async fn small_blob(&self, repository: &RepositoryName, digest: &Digest, max_bytes: usize) -> Result<Bytes> {
        self.config_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let bytes = self.script().small.get(digest).cloned();
        match bytes {
            Some(b) if b.len() > max_bytes => {
                Err(Error::bad_gateway(format!("blob {digest} is over {max_bytes} bytes")))
            }
            Some(b) => Ok(b),
            None => Err(Error::new(ErrorCode::BlobUnknown, format!("blob {repository}@{digest} is unknown"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Feature, FeatureSet};
    use std::sync::Arc;

    struct MemoryFixture {
        current: Mutex<Arc<MemoryStore>>,
    }

    #[async_trait]
    impl conformance::Fixture for MemoryFixture {
        async fn fresh(&self) -> Arc<dyn Store> {
            let store = Arc::new(MemoryStore::default());
            *self.current.lock().unwrap() = store.clone();
            store
        }
        async fn put_malformed_machine_type(&self, name: &str) {
            let malformed = MachineType {
                name: name.parse().unwrap(),
                features: FeatureSet(vec![Feature::Cpu("no-such-cpu".into())]),
                match_mode: Default::default(),
            };
            self.current.lock().unwrap().put_unvalidated_machine_type(malformed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_passes_the_conformance_suite() {
        let fixture = MemoryFixture { current: Mutex::new(Arc::new(MemoryStore::default())) };
        conformance::run_all(&fixture).await;
    }
}
