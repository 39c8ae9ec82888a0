//! MetaHub's signature of the selection (option, `--selection-signing-key`): each filtered index MetaHub generates is
//! signed once, with cosign's simple-signing payload naming it as pulled through MetaHub
//! (`<registry host>/<repository>`), and stored beside it. Served where cosign looks: the tag `sha256-<hex>.sig` of the
//! filtered digest, and the referrers of that digest; the signature's payload and config are served from the store
//! by digest (every other blob still redirects to the upstream).
//!
//! Store records, all through `put_generated_manifest`: the `.sig` manifest in the repository itself (so that a pull
//! of it by digest is a generated manifest like the filtered index); its two blobs under `_metahub-blob/<repository>`;
//! and a link from (filtered digest, key) to it under `_metahub-signed/<repository>`, written last, so that a link
//! names only complete records. The link names the key: after a key rotation each selection is signed afresh on its
//! next generation or `.sig` lookup.

use super::RegistryService;
use crate::cosign::{self, SelectionSigner, SignatureArtifact};
use crate::error::{Error, Result};
use crate::ports::Manifest;
use crate::reference::{Digest, RepositoryName};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;

/// Names no client can use (a component may not start with '_'): these records never answer a pull of their own.
const BLOB_NAMESPACE: &str = "_metahub-blob";
const LINK_NAMESPACE: &str = "_metahub-signed";
/// The link record's media type; the signature manifest's digest rides in it as a parameter (a record's digest must
/// hash its bytes, and the bytes may depend only on what the link is looked up by).
const LINK_TYPE: &str = "application/vnd.metahub.signature";

/// The selection signing key and the registry host signatures name (the public URL's `host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionSigning {
    pub signer: Arc<SelectionSigner>,
    pub registry_host: String,
}

fn link(repository: &RepositoryName, subject: &Digest, signer: &SelectionSigner) -> (RepositoryName, Vec<u8>) {
    let bytes = json!({"signed": subject.as_str(), "key": signer.fingerprint()}).to_string().into_bytes();
    (repository.with_prefix(LINK_NAMESPACE), bytes)
}

impl RegistryService {
    /// Sign the filtered indexes this service generates (see the module header).
    pub fn with_selection_signing(mut self, signing: SelectionSigning) -> Self {
        self.selection_signing = Some(signing);
        self
    }

    /// The stored signature of `subject` by the current key, if there is one (store reads only).
    async fn stored_signature(&self, repository: &RepositoryName, subject: &Digest) -> Result<Option<Manifest>> {
        let Some(signing) = &self.selection_signing else { return Ok(None) };
        let (name, bytes) = link(repository, subject, &signing.signer);
        let Some(record) = self.store.generated_manifest(&name, &Digest::sha256_of(&bytes)).await? else {
            return Ok(None);
        };
        let signature: Digest = record
            .media_type
            .strip_prefix(LINK_TYPE)
            .and_then(|rest| rest.trim_start_matches(';').trim().strip_prefix("digest="))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| Error::internal(format!("the store's signature link of {subject} is malformed")))?;
        self.store.generated_manifest(repository, &signature).await
    }

    /// Signs `index` (a filtered index just generated) unless the current key already did: called once per
    /// generation on each instance, never on a warm pull.
    pub(super) async fn sign_selection(&self, repository: &RepositoryName, index: &Manifest) -> Result<()> {
        if self.selection_signing.is_some() && self.stored_signature(repository, &index.digest).await?.is_none() {
            self.sign_and_store(repository, index).await?;
        }
        Ok(())
    }

    async fn sign_and_store(&self, repository: &RepositoryName, index: &Manifest) -> Result<SignatureArtifact> {
        let signing = self.selection_signing.as_ref().ok_or_else(|| Error::internal("no selection signing key"))?;
        let identity = format!("{}/{repository}", signing.registry_host);
        let artifact = cosign::sign(&signing.signer, &identity, index);
        let blobs = repository.with_prefix(BLOB_NAMESPACE);
        for (digest, media_type, bytes) in &artifact.blobs {
            let blob = Manifest { digest: digest.clone(), media_type: (*media_type).to_owned(), bytes: bytes.clone() };
            self.store.put_generated_manifest(&blobs, &blob).await?;
        }
        self.store.put_generated_manifest(repository, &artifact.manifest).await?;
        let (name, bytes) = link(repository, &index.digest, &signing.signer);
        let record = Manifest {
            digest: Digest::sha256_of(&bytes),
            media_type: format!("{LINK_TYPE}; digest={}", artifact.manifest.digest),
            bytes: Bytes::from(bytes),
        };
        self.store.put_generated_manifest(&name, &record).await?;
        tracing::info!(%repository, subject = %index.digest, signature = %artifact.manifest.digest, key = signing.signer.fingerprint(), "signed a selection");
        Ok(artifact)
    }

    /// MetaHub's signature manifest of `subject` (the tag `sha256-<hex>.sig`), when signing is on and `subject` is an
    /// index MetaHub generated: the stored one, or signed now (first lookup after a key rotation). `None` otherwise:
    /// the tag is then the upstream's.
    pub async fn selection_signature(&self, repository: &RepositoryName, subject: &Digest) -> Result<Option<Manifest>> {
        if self.selection_signing.is_none() {
            return Ok(None);
        }
        if let Some(stored) = self.stored_signature(repository, subject).await? {
            return Ok(Some(stored));
        }
        let generated = match self.cache.manifest(repository, subject) {
            Some(crate::cache::Kept::Generated(m)) => Some(m),
            _ => self.store.generated_manifest(repository, subject).await?,
        };
        // Only filtered indexes are signed (not, say, a signature manifest stored in the same repository).
        match generated {
            Some(index) if crate::filter::is_index_media_type(&index.media_type) => {
                Ok(Some(self.sign_and_store(repository, &index).await?.manifest))
            }
            _ => Ok(None),
        }
    }

    /// A blob MetaHub made itself (a signature's payload or config), served from the store; `None` for every other
    /// blob (those redirect to the upstream). Without a signing key, not even looked up.
    pub async fn own_blob(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<Manifest>> {
        if self.selection_signing.is_none() {
            return Ok(None);
        }
        self.store.generated_manifest(&repository.with_prefix(BLOB_NAMESPACE), digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheOptions;
    use crate::filter::{OCI_INDEX, OCI_MANIFEST};
    use crate::machine::{MachineType, MatchMode};
    use crate::ports::Store as _;
    use crate::reference::Reference;
    use crate::testing::{FakeUpstream, MemoryStore};

    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxebCpRwuv92jtGjC
sB4YMIanlDhzGAtnW/zr2W4voh+hRANCAARM+Of2qILiEDXJQsde5/jKdnBx6X5I
h4Gh+LPKtA+nUceNdh9tHxvE9a5Zut+X3DtLiam/83RY6A+w36kwp7zD
-----END PRIVATE KEY-----";

    fn index() -> String {
        let entry = |hex: char, features: &[&str]| {
            json!({"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", hex.to_string().repeat(64)), "size": 1,
                   "platform": {"os": "linux", "architecture": "amd64", "features": features}})
        };
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
               "manifests": [entry('1', &[]), entry('2', &["cpu:haswell"])]})
        .to_string()
    }

    fn mt(name: &str) -> crate::machine::MachineTypeName {
        name.parse().unwrap()
    }

    async fn service(store: Arc<MemoryStore>, upstream: Arc<FakeUpstream>, signed: bool) -> RegistryService {
        let hsw = MachineType::new("hsw", vec!["cpu:haswell".into()], MatchMode::Best).unwrap();
        store.put_machine_type(&hsw).await.unwrap();
        let service = RegistryService::new(store, upstream, CacheOptions::default());
        if !signed {
            return service;
        }
        let signer = Arc::new(SelectionSigner::from_pkcs8_pem(KEY).unwrap());
        service.with_selection_signing(SelectionSigning { signer, registry_host: "hub.example:5000".into() })
    }

    #[tokio::test]
    async fn a_filtered_index_is_signed_once_for_every_instance() {
        let (store, upstream) = (Arc::new(MemoryStore::default()), Arc::new(FakeUpstream::default()));
        upstream.tag("org/app", "latest", OCI_INDEX, index());
        let repo: RepositoryName = "org/app".parse().unwrap();
        let tag: Reference = "latest".parse().unwrap();
        let first = service(store.clone(), upstream.clone(), true).await;
        let filtered = first.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
        // the index, its source link, the signature, its payload and config, the signature link
        assert_eq!(store.generated_count(), 6);
        let signature = first.selection_signature(&repo, &filtered.digest).await.unwrap().expect("signed");
        first.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
        let sig_tag: Reference = format!("{}.sig", filtered.digest.as_str().replacen(':', "-", 1)).parse().unwrap();
        assert_eq!(first.manifest(&repo, &sig_tag, &mt("hsw")).await.unwrap(), signature);
        // another instance (cold caches, same store): the stored signature, nothing new
        let second = service(store.clone(), upstream.clone(), true).await;
        second.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
        assert_eq!(second.selection_signature(&repo, &filtered.digest).await.unwrap(), Some(signature.clone()));
        assert_eq!(store.generated_count(), 6);
        // its blobs are MetaHub's own; a digest MetaHub did not make has no signature of MetaHub's
        let m: serde_json::Value = serde_json::from_slice(&signature.bytes).unwrap();
        for desc in [&m["config"], &m["layers"][0]] {
            let digest: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
            let blob = second.own_blob(&repo, &digest).await.unwrap().expect("served from the store");
            assert_eq!(Digest::sha256_of(&blob.bytes), digest);
        }
        let upstream_index = Digest::sha256_of(index().as_bytes());
        assert_eq!(second.selection_signature(&repo, &upstream_index).await.unwrap(), None);
        assert_eq!(
            second.selection_signature(&repo, &signature.digest).await.unwrap(),
            None,
            "signatures are not signed"
        );
        // without a key: no lookups, no signatures
        let unsigned = service(store.clone(), upstream, false).await;
        assert_eq!(unsigned.selection_signature(&repo, &filtered.digest).await.unwrap(), None);
        assert_eq!(unsigned.own_blob(&repo, &signature.digest).await.unwrap(), None);
    }
}
