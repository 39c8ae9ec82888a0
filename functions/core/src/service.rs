//! The pull flow: what a manifest or blob request by a machine type is answered with, over the ports.

use crate::cache::{BoundedMap, CachingUpstream};
use crate::error::{Error, ErrorCode, Result};
use crate::filter::{self, ACCEPT_ALL, Filtered};
use crate::machine::MachineType;
use crate::observe::{self, Answer, Cache, ObservedUpstream};
use crate::ports::{BlobLocation, Manifest, Store, Upstream};
use crate::reference::{Digest, ImageRef, Reference, RepositoryName};
use bytes::Bytes;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

static ACCEPT: LazyLock<Vec<String>> = LazyLock::new(|| ACCEPT_ALL.iter().map(|s| s.to_string()).collect());

/// Tuning of the in-process caches.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Immutable manifests (upstream by digest, generated indexes) kept per process.
    pub manifests: usize,
    /// Reuse a tag's upstream HEAD for this long; `None` (the default) checks upstream on every request.
    pub tag_ttl: Option<Duration>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { manifests: 4096, tag_ttl: None }
    }
}

/// The registry's read side, shared by every transport.
pub struct RegistryService {
    store: Arc<dyn Store>,
    upstream: CachingUpstream,
    /// (upstream index digest, machine type) → filtered index; filtering is pure, so this never goes stale.
    filtered: BoundedMap<(Digest, String), Arc<Filtered>>,
    /// Generated indexes this process stored (or read back), by repository and digest.
    generated: BoundedMap<(RepositoryName, Digest), Manifest>,
    /// The last manifest served per (repository, tag, machine type): the answer when the upstream is down.
    last_served: BoundedMap<(RepositoryName, Reference, String), Manifest>,
}

impl RegistryService {
    pub fn new(store: Arc<dyn Store>, upstream: Arc<dyn Upstream>, options: CacheOptions) -> Self {
        RegistryService {
            store,
            upstream: CachingUpstream::new(
                Arc::new(ObservedUpstream::new(upstream)),
                options.manifests,
                options.tag_ttl,
            ),
            filtered: BoundedMap::new(options.manifests),
            generated: BoundedMap::new(options.manifests),
            last_served: BoundedMap::new(options.manifests),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The machine type an account pulls as; a token naming a deleted type is refused.
    pub async fn machine_type(&self, name: &str) -> Result<MachineType> {
        self.store
            .machine_type(name)
            .await?
            .ok_or_else(|| Error::denied(format!("machine type {name:?} no longer exists; ask an operator")))
    }

    /// The manifest `machine_type` is served for `repository:reference`.
    pub async fn manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        machine_type: &str,
    ) -> Result<Manifest> {
        match reference {
            Reference::Tag(_) => self.manifest_by_tag(repository, reference, machine_type).await,
            Reference::Digest(digest) => self.manifest_by_digest(repository, digest).await,
        }
    }

    async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine_type: &str,
    ) -> Result<Manifest> {
        let key = (repository.clone(), tag.clone(), machine_type.to_owned());
        match self.fresh_manifest_by_tag(repository, tag, machine_type).await {
            Ok(manifest) => {
                self.last_served.insert(key, manifest.clone());
                Ok(manifest)
            }
            Err(e) if upstream_down(&e) => match self.last_served.get(&key) {
                Some(stale) => {
                    observe::answer(Answer::Stale);
                    tracing::warn!(%repository, %tag, machine_type, error = %e, digest = %stale.digest, "upstream failing: serving the last index served (stale)");
                    Ok(stale)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn fresh_manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine_type: &str,
    ) -> Result<Manifest> {
        let head = self.upstream.head_manifest(repository, tag, &ACCEPT).await?;
        let by_digest = Reference::Digest(head.digest.clone());
        // The tag exists (the HEAD said so): a digest it announced but does not serve is the upstream's fault.
        let announced = |e: Error| match e.code {
            ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => Error::bad_gateway(format!(
                "upstream announced {} for {repository}:{tag} but does not serve it",
                head.digest
            )),
            _ => e,
        };
        if !filter::is_index_media_type(&head.media_type) {
            observe::answer(Answer::Verbatim);
            return self.upstream.get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced);
        }
        let machine = self.machine_type(machine_type).await?;
        let key = (head.digest.clone(), fingerprint(&machine));
        let cached = self.filtered.get(&key);
        observe::cache(Cache::Filtered, cached.is_some());
        let filtered = match cached {
            Some(f) => f,
            None => {
                let index = self.upstream.get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced)?;
                if !filter::is_index_media_type(&index.media_type) {
                    observe::answer(Answer::Verbatim);
                    return Ok(index);
                }
                let f = Arc::new(filter::filter_index(&index.bytes, &index.media_type, &machine)?);
                self.filtered.insert(key, f.clone());
                f
            }
        };
        let manifest = Manifest {
            digest: filtered.digest.clone(),
            media_type: filtered.media_type.clone(),
            bytes: Bytes::from(filtered.bytes.clone()),
        };
        observe::answer(if manifest.digest == head.digest { Answer::Verbatim } else { Answer::Filtered });
        // Stored so that a client can fetch it by its own digest later, from any instance.
        let generated_key = (repository.clone(), manifest.digest.clone());
        if self.generated.get(&generated_key).is_none() {
            self.store.put_generated_manifest(repository, &manifest).await?;
            self.generated.insert(generated_key, manifest.clone());
        }
        Ok(manifest)
    }

    async fn manifest_by_digest(&self, repository: &RepositoryName, digest: &Digest) -> Result<Manifest> {
        let key = (repository.clone(), digest.clone());
        if let Some(m) = self.generated.get(&key) {
            observe::answer(Answer::Generated);
            observe::cache(Cache::Manifest, true);
            return Ok(m);
        }
        observe::answer(Answer::Verbatim);
        if let Some(m) = self.upstream.cached(repository, digest) {
            observe::cache(Cache::Manifest, true);
            return Ok(m);
        }
        if let Some(m) = self.store.generated_manifest(repository, digest).await? {
            observe::answer(Answer::Generated);
            self.generated.insert(key, m.clone());
            return Ok(m);
        }
        self.upstream.get_manifest(repository, &Reference::Digest(digest.clone()), &ACCEPT).await
    }

    /// The upstream's manifest for `image`, unfiltered: what `explain` reads.
    pub async fn upstream_manifest(&self, image: &ImageRef) -> Result<Manifest> {
        self.upstream.get_manifest(&image.name, &image.reference, &ACCEPT).await
    }

    pub async fn blob(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        observe::answer(Answer::Redirect);
        self.upstream.blob_location(repository, digest).await
    }
}

/// Failures of the upstream itself, as opposed to answers about the image (unknown, denied).
fn upstream_down(error: &Error) -> bool {
    matches!(error.code, ErrorCode::Unavailable | ErrorCode::BadGateway | ErrorCode::TooManyRequests)
}

/// What filtering depends on in a machine type: a change of features or mode is a different key.
fn fingerprint(machine: &MachineType) -> String {
    format!("{}|{}|{}", machine.name, machine.match_mode, machine.features.join(","))
}
