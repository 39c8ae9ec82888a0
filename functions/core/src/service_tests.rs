//! The pull flow over an in-memory store and a scripted upstream.

use super::*;
use crate::machine::MatchMode;
use crate::ports::{Account, AccountChange, BlobLocation, Change, ManifestHead};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
struct MemoryStore {
    machine_types: Mutex<HashMap<String, MachineType>>,
    generated: Mutex<HashMap<Digest, Manifest>>,
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn machine_type(&self, name: &str) -> Result<Option<MachineType>> {
        Ok(self.machine_types.lock().unwrap().get(name).cloned())
    }
    async fn put_machine_type(&self, mt: &MachineType) -> Result<()> {
        self.machine_types.lock().unwrap().insert(mt.name.clone(), mt.clone());
        Ok(())
    }
    async fn list_machine_types(&self) -> Result<Vec<MachineType>> {
        Ok(self.machine_types.lock().unwrap().values().cloned().collect())
    }
    async fn delete_machine_type(&self, name: &str) -> Result<bool> {
        Ok(self.machine_types.lock().unwrap().remove(name).is_some())
    }
    async fn account(&self, _: &str) -> Result<Option<Account>> {
        Ok(None)
    }
    async fn put_account(&self, _: &Account) -> Result<()> {
        Ok(())
    }
    async fn list_accounts(&self) -> Result<Vec<Account>> {
        Ok(vec![])
    }
    async fn delete_account(&self, _: &str) -> Result<bool> {
        Ok(false)
    }
    async fn update_account(&self, _: &str, _: &AccountChange) -> Result<Option<Account>> {
        Ok(None)
    }
    async fn generated_manifest(&self, _: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>> {
        Ok(self.generated.lock().unwrap().get(digest).cloned())
    }
    async fn put_generated_manifest(&self, _: &RepositoryName, manifest: &Manifest) -> Result<()> {
        self.generated.lock().unwrap().insert(manifest.digest.clone(), manifest.clone());
        Ok(())
    }
    async fn signing_key_or_insert(&self, candidate: &[u8]) -> Result<Vec<u8>> {
        Ok(candidate.to_vec())
    }
    async fn record_change(&self, _: &Change) -> Result<()> {
        Ok(())
    }
    async fn changes(&self, _: usize) -> Result<Vec<Change>> {
        Ok(vec![])
    }
    async fn watched_images(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    async fn watch_image(&self, _: &str) -> Result<bool> {
        Ok(false)
    }
    async fn unwatch_image(&self, _: &str) -> Result<bool> {
        Ok(false)
    }
}

/// One index under `org/app:latest`; its HEAD answers `head_type`; `down` makes every call a 503.
struct ScriptedUpstream {
    index: Bytes,
    head_type: String,
    down: AtomicBool,
}

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"amd64"}},
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"amd64","features":["cpu:haswell"]}}]}"#;

impl ScriptedUpstream {
    fn new(head_type: &str) -> Arc<Self> {
        Arc::new(ScriptedUpstream {
            index: Bytes::from_static(INDEX.as_bytes()),
            head_type: head_type.into(),
            down: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorCode::Unavailable, "upstream down"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Upstream for ScriptedUpstream {
    async fn head_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<ManifestHead> {
        self.check()?;
        Ok(ManifestHead {
            digest: Digest::sha256_of(&self.index),
            media_type: self.head_type.clone(),
            size: self.index.len() as u64,
        })
    }
    async fn get_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<Manifest> {
        self.check()?;
        // As the adapter does: a generic Content-Type gives way to the body's mediaType.
        Ok(Manifest {
            digest: Digest::sha256_of(&self.index),
            media_type: filter::OCI_INDEX.into(),
            bytes: self.index.clone(),
        })
    }
    async fn blob_location(&self, _: &RepositoryName, _: &Digest) -> Result<BlobLocation> {
        Err(Error::new(ErrorCode::BlobUnknown, "no blobs here"))
    }
}

async fn new_service(upstream: Arc<ScriptedUpstream>, options: CacheOptions) -> (RegistryService, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    for (name, features) in [("zen2", vec!["cpu:zen2"]), ("hsw", vec!["cpu:haswell"])] {
        let features = features.into_iter().map(String::from).collect();
        store.put_machine_type(&MachineType::new(name, features, MatchMode::Best).unwrap()).await.unwrap();
    }
    (RegistryService::new(store.clone(), upstream, options), store)
}

fn app() -> (RepositoryName, Reference) {
    ("org/app".parse().unwrap(), "latest".parse().unwrap())
}

#[tokio::test]
async fn a_generic_head_content_type_does_not_bypass_filtering() {
    for head_type in ["application/json", "", "text/plain", filter::OCI_INDEX] {
        let upstream = ScriptedUpstream::new(head_type);
        let (service, _) = new_service(upstream.clone(), CacheOptions::default()).await;
        let (repo, tag) = app();
        let served = service.manifest(&repo, &tag, "zen2").await.unwrap();
        assert_ne!(served.digest, Digest::sha256_of(&upstream.index), "HEAD said {head_type:?}: filtered");
        assert!(!String::from_utf8_lossy(&served.bytes).contains("cpu:haswell"), "a zen2 runs no haswell build");
    }
}

#[tokio::test]
async fn stale_serving_is_keyed_by_features_and_bounded_in_age() {
    let upstream = ScriptedUpstream::new(filter::OCI_INDEX);
    let (service, store) = new_service(upstream.clone(), CacheOptions::default()).await;
    let (repo, tag) = app();
    let fresh = service.manifest(&repo, &tag, "hsw").await.unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    assert_eq!(service.manifest(&repo, &tag, "hsw").await.unwrap(), fresh, "served stale");
    // the machine type's features change while the upstream is down: the old index does not fit it any more
    store.put_machine_type(&MachineType::new("hsw", vec!["cpu:zen2".into()], MatchMode::Best).unwrap()).await.unwrap();
    let e = service.manifest(&repo, &tag, "hsw").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);

    let options = CacheOptions { max_stale: Duration::ZERO, ..CacheOptions::default() };
    let (service, _) = new_service(upstream.clone(), options).await;
    upstream.down.store(false, Ordering::SeqCst);
    service.manifest(&repo, &tag, "zen2").await.unwrap();
    upstream.down.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2));
    let e = service.manifest(&repo, &tag, "zen2").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "older than max_stale: not served");
}

#[tokio::test]
async fn caches_stay_within_their_byte_budget() {
    let upstream = ScriptedUpstream::new(filter::OCI_INDEX);
    let options = CacheOptions { max_bytes: 6 * 4096, ..CacheOptions::default() };
    let (service, _) = new_service(upstream, options).await;
    let (repo, tag) = app();
    service.manifest(&repo, &tag, "zen2").await.unwrap();
    service.manifest(&repo, &tag, "hsw").await.unwrap();
    assert!(service.filtered.weight() <= 4096);
    assert!(service.generated.weight() <= 4096);
    assert!(service.last_served.weight() <= 4096);
}
