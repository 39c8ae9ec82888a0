//! The pull flow: what a manifest or blob request by a machine type is answered with, over the ports.

use crate::cache::{BoundedMap, CachingUpstream, manifest_weight};
use crate::error::{Error, ErrorCode, Result};
use crate::filter::{self, ACCEPT_ALL};
use crate::machine::MachineType;
use crate::observe::{self, Answer, Cache, ObservedUpstream};
use crate::ports::{BlobLocation, Manifest, Store, Upstream};
use crate::reference::{Digest, ImageRef, Reference, RepositoryName};
use bytes::Bytes;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

mod listing;
mod referrers;

pub use referrers::{ReferrersIndex, is_referrers_tag};

static ACCEPT: LazyLock<Vec<String>> = LazyLock::new(|| ACCEPT_ALL.iter().map(|s| s.to_string()).collect());

/// Tuning of the in-process caches.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Entries kept per cache at most.
    pub max_entries: usize,
    /// Bytes all the caches together hold at most (manifests weighed by their size): half for upstream manifests,
    /// the rest shared by filtered indexes, generated indexes and the last index served per tag.
    pub max_bytes: usize,
    /// Reuse a tag's upstream HEAD for this long; `None` (the default) checks upstream on every request.
    pub tag_ttl: Option<Duration>,
    /// While the upstream fails, the last index served for a tag is served again for at most this long after it
    /// was last fresh; zero: never.
    pub max_stale: Duration,
}

/// [`CacheOptions::max_bytes`] by default: keeps `metahub serve` well under 128 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;
/// [`CacheOptions::max_stale`] by default.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions { max_entries: 4096, max_bytes: DEFAULT_CACHE_BYTES, tag_ttl: None, max_stale: DEFAULT_MAX_STALE }
    }
}

/// The registry's read side, shared by every transport.
pub struct RegistryService {
    store: Arc<dyn Store>,
    upstream: CachingUpstream,
    /// (upstream index digest, machine type fingerprint) → filtered index; filtering is pure: never stale.
    filtered: BoundedMap<(Digest, String), Manifest>,
    /// Generated indexes this process stored (or read back), by repository and digest.
    generated: BoundedMap<(RepositoryName, Digest), Manifest>,
    /// The last manifest served per (repository, tag, machine type fingerprint), and when it was fresh: the answer
    /// while the upstream is down, for at most `max_stale`.
    last_served: BoundedMap<(RepositoryName, Reference, String), (Instant, Manifest)>,
    max_stale: Duration,
    index_digest_pulls: IndexDigestPulls,
}

impl RegistryService {
    pub fn new(store: Arc<dyn Store>, upstream: Arc<dyn Upstream>, options: CacheOptions) -> Self {
        let (entries, sixth) = (options.max_entries, options.max_bytes / 6);
        RegistryService {
            store,
            upstream: CachingUpstream::new(
                Arc::new(ObservedUpstream::new(upstream)),
                entries,
                options.max_bytes / 2,
                options.tag_ttl,
            ),
            filtered: BoundedMap::new(entries, sixth, manifest_weight),
            generated: BoundedMap::new(entries, sixth, manifest_weight),
            last_served: BoundedMap::new(entries, sixth, |(_, m)| manifest_weight(m)),
            max_stale: options.max_stale,
            index_digest_pulls: IndexDigestPulls::default(),
        }
    }

    /// What a pull by the digest of an upstream index is answered with.
    pub fn with_index_digest_pulls(mut self, policy: IndexDigestPulls) -> Self {
        self.index_digest_pulls = policy;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The machine type an account pulls as; a token naming a deleted type is refused.
    pub async fn machine_type(&self, name: &str) -> Result<MachineType> {
        self.store
            .machine_type(&name.parse()?)
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
            // A referrers tag lists artifacts, not platforms: served as the upstream has it.
            Reference::Tag(tag) if is_referrers_tag(tag.as_str()) => {
                self.upstream.get_manifest(repository, reference, &ACCEPT).await
            }
            Reference::Tag(_) => self.manifest_by_tag(repository, reference, machine_type).await,
            Reference::Digest(digest) => self.manifest_by_digest(repository, digest, machine_type).await,
        }
    }

    async fn manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine_type: &str,
    ) -> Result<Manifest> {
        let machine = self.machine_type(machine_type).await?;
        // By what filtering depends on: after a change of features, an index served before does not fit any more.
        let key = (repository.clone(), tag.clone(), fingerprint(&machine));
        match self.fresh_manifest_by_tag(repository, tag, &machine).await {
            Ok(manifest) => {
                self.last_served.insert(key, (Instant::now(), manifest.clone()));
                Ok(manifest)
            }
            Err(e) if upstream_down(&e) => match self.last_served.get(&key) {
                Some((fresh_at, stale)) if fresh_at.elapsed() <= self.max_stale => {
                    observe::answer(Answer::Stale);
                    tracing::warn!(%repository, %tag, machine_type, error = %e, digest = %stale.digest, age_s = fresh_at.elapsed().as_secs(), "upstream failing: serving the last index served (stale)");
                    Ok(stale)
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn fresh_manifest_by_tag(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine: &MachineType,
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
            // A HEAD's Content-Type may be generic (`application/json`): the body's mediaType decides, as on GET.
            // The GET by digest is cached, so an index found here is not fetched twice.
            let manifest = self.upstream.get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced)?;
            if !filter::is_index_media_type(&manifest.media_type) {
                observe::answer(Answer::Verbatim);
                return Ok(manifest);
            }
        }
        let key = (head.digest.clone(), fingerprint(machine));
        let cached = self.filtered.get(&key);
        observe::cache(Cache::Filtered, cached.is_some());
        let manifest = match cached {
            Some(f) => f,
            None => {
                let index = self.upstream.get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced)?;
                if !filter::is_index_media_type(&index.media_type) {
                    observe::answer(Answer::Verbatim);
                    return Ok(index);
                }
                let f = filter::filter_index(&index.bytes, &index.media_type, machine)?;
                let digest = if f.verbatim { head.digest.clone() } else { f.digest };
                let f = Manifest { digest, media_type: f.media_type, bytes: Bytes::from(f.bytes) };
                self.filtered.insert(key, f.clone());
                f
            }
        };
        if manifest.digest == head.digest {
            // Nothing dropped, nothing changed: the upstream's bytes under the upstream's digest, which a pull by
            // digest then gets from the upstream; nothing to store.
            observe::answer(Answer::Verbatim);
            return Ok(manifest);
        }
        observe::answer(Answer::Filtered);
        // Stored so that a client can fetch it by its own digest later, from any instance.
        let generated_key = (repository.clone(), manifest.digest.clone());
        if self.generated.get(&generated_key).is_none() {
            self.store.put_generated_manifest(repository, &manifest).await?;
            self.remember_source(repository, &manifest.digest, &head.digest).await?;
            self.generated.insert(generated_key, manifest.clone());
        }
        Ok(manifest)
    }

    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        machine_type: &str,
    ) -> Result<Manifest> {
        let key = (repository.clone(), digest.clone());
        if let Some(m) = self.generated.get(&key) {
            observe::answer(Answer::Generated);
            observe::cache(Cache::Manifest, true);
            return Ok(m);
        }
        if let Some(m) = self.upstream.cached(repository, digest) {
            observe::answer(Answer::Verbatim);
            observe::cache(Cache::Manifest, true);
            return self.upstream_by_digest(repository, m, machine_type).await;
        }
        if let Some(m) = self.store.generated_manifest(repository, digest).await? {
            observe::answer(Answer::Generated);
            self.generated.insert(key, m.clone());
            return Ok(m);
        }
        observe::answer(Answer::Verbatim);
        let m = self.upstream.get_manifest(repository, &Reference::Digest(digest.clone()), &ACCEPT).await?;
        self.upstream_by_digest(repository, m, machine_type).await
    }

    /// An upstream manifest pulled by its digest. An index cannot be filtered then (the client verifies the digest):
    /// `Refuse` names what to pull instead — unless filtering keeps that index unchanged for this machine type, as
    /// when a tag pull was answered with it verbatim and the client (containerd) follows up by digest.
    async fn upstream_by_digest(
        &self,
        repository: &RepositoryName,
        manifest: Manifest,
        machine_type: &str,
    ) -> Result<Manifest> {
        if self.index_digest_pulls == IndexDigestPulls::Verbatim || !filter::is_index_media_type(&manifest.media_type) {
            return Ok(manifest);
        }
        let machine = self.machine_type(machine_type).await?;
        let filtered = filter::filter_index(&manifest.bytes, &manifest.media_type, &machine)?;
        if filtered.verbatim {
            return Ok(manifest);
        }
        let children: Vec<String> = filter::Index::parse(&filtered.bytes)?
            .entries
            .iter()
            .filter(|e| e.attests.is_none())
            .map(|e| format!("{repository}@{}", e.digest))
            .collect();
        Err(Error::denied(format!(
            "{} is an upstream index: pulled by its digest it cannot be filtered for machine type {:?}, and this \
             registry refuses such pulls; pull by tag, or by the digest of the image served: {}",
            manifest.digest,
            machine.name,
            children.join(", ")
        ))
        .with_detail(serde_json::json!({"indexDigest": manifest.digest.to_string(), "pullInstead": children})))
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

/// What a pull by the digest of an upstream index gets (`METAHUB_INDEX_DIGEST_PULLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexDigestPulls {
    /// The whole index, verbatim: pins keep working, but the machine's client picks the entry itself.
    #[default]
    Verbatim,
    /// A `DENIED` error naming the tag-or-child-digest to pull instead (unless filtering changes nothing).
    Refuse,
}

impl std::str::FromStr for IndexDigestPulls {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "verbatim" => Ok(IndexDigestPulls::Verbatim),
            "refuse" => Ok(IndexDigestPulls::Refuse),
            _ => Err(Error::invalid(format!("{s:?} is neither verbatim nor refuse"))),
        }
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

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
