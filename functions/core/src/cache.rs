//! The pull flow's in-process caches, each with its byte bound: [`PullCache`] holds what the service derives
//! (filtered indexes, generated indexes, the last index served per tag, child records, the builds' NVIDIA
//! requirements) and the caching decorator of the upstream port, [`CachingUpstream`]; both are built on the small
//! [`BoundedMap`]. The caches of the login live with the login, in `http`: `AccountCheck` (accounts read a moment ago,
//! `http/src/auth.rs`) and the verified credentials (`http/src/verified.rs`); the upstream's bearer tokens in
//! `upstream/src/auth/tokens.rs`; the DynamoDB store's machine types for `MACHINE_TYPE_CACHE_TTL` in the store itself.
//!
//! Manifests fetched by digest are immutable, so they are kept. Tags are checked upstream with a HEAD (free against
//! Docker Hub's rate limit); checks of one tag in flight at the same moment share one HEAD, and a HEAD's answer is
//! reused for a short window after it came ([`DEFAULT_TAG_TTL`]; `None` asks upstream on every request): a fleet
//! pulling one tag at once costs the upstream a HEAD per window, not one per node. Blob locations (presigned URLs expire)
//! are reused for [`BLOB_LOCATION_TTL`]; lookups of one blob in flight at the same moment share one request.

use crate::error::Result;
use crate::machine::MachineType;
use crate::nvidia::Requirements;
use crate::observe::{self, Cache};
use crate::ports::{BlobLocation, ChildRecord, Manifest, ManifestHead, Referrers, TagPage, Upstream};
use crate::reference::{Digest, Reference, RepositoryName};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Tuning of the in-process caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// Entries kept per cache at most.
    pub max_entries: usize,
    /// Bytes all the caches together hold at most (manifests weighed by their size): half for upstream manifests,
    /// the rest shared by filtered indexes, generated indexes and the last index served per tag.
    pub max_bytes: usize,
    /// Reuse a tag's upstream HEAD for this long after its answer ([`DEFAULT_TAG_TTL`] by default); `None` checks
    /// upstream on every request (checks in flight together still share one HEAD).
    pub tag_ttl: Option<Duration>,
    /// While the upstream fails, the last index served for a tag is served again for at most this long after it
    /// was last fresh; zero: never.
    pub max_stale: Duration,
}

/// [`CacheOptions::max_bytes`] by default: keeps `metahub serve` well under 128 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;
/// [`CacheOptions::tag_ttl`] by default: a tag moved upstream is seen at most this long (plus one HEAD) later.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(1);
/// [`CacheOptions::max_stale`] by default.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_entries: 4096,
            max_bytes: DEFAULT_CACHE_BYTES,
            tag_ttl: Some(DEFAULT_TAG_TTL),
            max_stale: DEFAULT_MAX_STALE,
        }
    }
}

/// A manifest held in memory under its digest, and whose it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// An index MetaHub generated (filtered) and stored.
    Generated(Manifest),
    /// The upstream's, as fetched.
    Upstream(Manifest),
}

/// What the pull flow keeps in memory, each map within its share of [`CacheOptions::max_bytes`].
pub struct PullCache {
    upstream: CachingUpstream,
    /// (upstream index digest, machine type fingerprint) → filtered index; filtering is pure: never stale.
    filtered: BoundedMap<(Digest, String), Manifest>,
    /// Generated indexes this process stored (or read back), by repository and digest.
    generated: BoundedMap<(RepositoryName, Digest), Manifest>,
    /// The last manifest served per (repository, tag, machine type fingerprint), and when it was fresh: the answer
    /// while the upstream is down, for at most `max_stale`.
    last_served: BoundedMap<(RepositoryName, Reference, String), (Instant, Manifest)>,
    max_stale: Duration,
    /// What this process read or stored of children of upstream indexes: a pull by a child's digest is judged by it.
    children: BoundedMap<(RepositoryName, Digest), ChildRecord>,
    /// The upstream indexes whose children this process stored: each is written once per process.
    recorded: BoundedMap<(RepositoryName, Digest), ()>,
    /// The NVIDIA requirements of child manifests, by digest (immutable: the digest fixes the config).
    gpu: BoundedMap<Digest, Arc<Requirements>>,
    /// Lookups of one child's requirements in flight at the same moment share one store read and config GET.
    gpu_flights: SingleFlight<Digest, Arc<Requirements>>,
}

impl PullCache {
    /// Half of `max_bytes` for upstream manifests (tag heads and blob locations on top, see [`CachingUpstream::new`]),
    /// a sixth each for filtered indexes, generated indexes and the last index served per tag.
    pub fn new(upstream: Arc<dyn Upstream>, options: &CacheOptions) -> Self {
        let (entries, sixth) = (options.max_entries, options.max_bytes / 6);
        PullCache {
            upstream: CachingUpstream::new(upstream, entries, options.max_bytes / 2, options.tag_ttl),
            filtered: BoundedMap::new(entries, sixth, manifest_weight),
            generated: BoundedMap::new(entries, sixth, manifest_weight),
            last_served: BoundedMap::new(entries, sixth, |(_, m)| manifest_weight(m)),
            max_stale: options.max_stale,
            children: BoundedMap::new(entries, sixth / 4, |r| r.platform.features.iter().map(String::len).sum()),
            recorded: BoundedMap::new(entries, sixth / 16, |_| 0),
            // Requirements are a few KiB at most (NVIDIA's strings: under 2 KiB); a sixteenth of the budget on top.
            gpu: BoundedMap::new(entries, options.max_bytes / 16, |r| {
                r.expressions.iter().map(String::len).sum::<usize>()
            }),
            gpu_flights: SingleFlight::new(),
        }
    }

    /// The NVIDIA requirements of child manifest `digest`: from memory, else from `read` (store, then upstream),
    /// which concurrent lookups of the same digest share; kept in memory when `read` succeeds.
    pub async fn gpu_requirements<F: Future<Output = Result<Requirements>>>(
        &self,
        digest: &Digest,
        read: impl FnOnce() -> F,
    ) -> Result<Arc<Requirements>> {
        if let Some(kept) = self.gpu.get(digest) {
            return Ok(kept);
        }
        let requirements = self.gpu_flights.run(digest.clone(), || async { read().await.map(Arc::new) }).await?;
        self.gpu.insert(digest.clone(), requirements.clone());
        Ok(requirements)
    }

    /// The upstream port through its caches.
    pub fn upstream(&self) -> &CachingUpstream {
        &self.upstream
    }

    /// The manifest `digest` names in `repository`, when memory has it: a generated index, or an upstream manifest.
    pub fn manifest(&self, repository: &RepositoryName, digest: &Digest) -> Option<Kept> {
        let key = (repository.clone(), digest.clone());
        let kept = match self.generated.get(&key) {
            Some(generated) => Some(Kept::Generated(generated)),
            None => self.upstream.cached(repository, digest).map(Kept::Upstream),
        };
        if kept.is_some() {
            observe::cache(Cache::Manifest, true);
        }
        kept
    }

    /// The upstream index `index` as filtered for `machine` before, noting the lookup in the request's record.
    pub fn filtered(&self, index: &Digest, machine: &MachineType) -> Option<Manifest> {
        let filtered = self.filtered.get(&(index.clone(), fingerprint(machine)));
        observe::cache(Cache::Filtered, filtered.is_some());
        filtered
    }

    pub fn keep_filtered(&self, index: &Digest, machine: &MachineType, filtered: &Manifest) {
        self.filtered.insert((index.clone(), fingerprint(machine)), filtered.clone());
    }

    /// Whether this process stored (or read back) the generated index `digest` of `repository`.
    pub fn has_generated(&self, repository: &RepositoryName, digest: &Digest) -> bool {
        self.generated.get(&(repository.clone(), digest.clone())).is_some()
    }

    pub fn keep_generated(&self, repository: &RepositoryName, generated: &Manifest) {
        self.generated.insert((repository.clone(), generated.digest.clone()), generated.clone());
    }

    /// Notes `manifest` as served fresh for `repository:tag` to `machine`, now.
    pub fn keep_served(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine: &MachineType,
        manifest: &Manifest,
    ) {
        let key = (repository.clone(), tag.clone(), fingerprint(machine));
        self.last_served.insert(key, (Instant::now(), manifest.clone()));
    }

    /// The last manifest served fresh for `repository:tag` to a machine type like `machine` (same features and
    /// mode), and how long ago, unless that is longer ago than `max_stale`.
    pub fn last_served(
        &self,
        repository: &RepositoryName,
        tag: &Reference,
        machine: &MachineType,
    ) -> Option<(Duration, Manifest)> {
        let (fresh_at, manifest) = self.last_served.get(&(repository.clone(), tag.clone(), fingerprint(machine)))?;
        let age = fresh_at.elapsed();
        (age <= self.max_stale).then_some((age, manifest))
    }
}

/// Child records (see [`crate::ports::ChildRecord`]).
impl PullCache {
    pub fn child(&self, repository: &RepositoryName, digest: &Digest) -> Option<ChildRecord> {
        self.children.get(&(repository.clone(), digest.clone()))
    }

    pub fn keep_child(&self, repository: &RepositoryName, record: &ChildRecord) {
        self.children.insert((repository.clone(), record.digest.clone()), record.clone());
    }

    /// Whether this process stored the children of the upstream index `index` of `repository`.
    pub fn children_recorded(&self, repository: &RepositoryName, index: &Digest) -> bool {
        self.recorded.get(&(repository.clone(), index.clone())).is_some()
    }

    pub fn note_children_recorded(&self, repository: &RepositoryName, index: &Digest) {
        self.recorded.insert((repository.clone(), index.clone()), ());
    }
}

#[cfg(test)]
impl PullCache {
    /// The bytes the filtered, generated and last-served maps hold, as weighed.
    pub(crate) fn derived_weights(&self) -> [usize; 3] {
        [self.filtered.weight(), self.generated.weight(), self.last_served.weight()]
    }
}

/// What filtering depends on in a machine type: a change of features or mode is a different key.
fn fingerprint(machine: &MachineType) -> String {
    format!("{}|{}|{}", machine.name, machine.match_mode, machine.features.join(","))
}

/// What one entry costs besides its value's own bytes: keys (names, digests, tags), map and queue slots.
pub const ENTRY_OVERHEAD: usize = 256;

/// A map that forgets its oldest entries past `capacity` entries or `max_bytes` (insertion order), each entry
/// weighed by `weigh` plus [`ENTRY_OVERHEAD`]; a value heavier than the whole budget is not kept. Immutable values
/// only need this much: no entry ever goes stale, so recency tracking buys little for its cost on every hit.
pub struct BoundedMap<K, V> {
    capacity: usize,
    max_bytes: usize,
    weigh: fn(&V) -> usize,
    inner: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedMap<K, V> {
    pub fn new(capacity: usize, max_bytes: usize, weigh: fn(&V) -> usize) -> Self {
        BoundedMap {
            capacity: capacity.max(1),
            max_bytes,
            weigh,
            inner: Mutex::new(Entries { map: HashMap::new(), order: VecDeque::new(), bytes: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<K, V>> {
        // A panic while holding this lock cannot leave the map inconsistent: take it back.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().map.get(key).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let weight = (self.weigh)(&value) + ENTRY_OVERHEAD;
        if weight > self.max_bytes {
            return;
        }
        let mut guard = self.lock();
        let entries = &mut *guard;
        match entries.map.insert(key.clone(), (value, weight)) {
            Some((_, old)) => entries.bytes -= old,
            None => entries.order.push_back(key),
        }
        entries.bytes += weight;
        while entries.order.len() > self.capacity || entries.bytes > self.max_bytes {
            let Some(old) = entries.order.pop_front() else { break };
            if let Some((_, w)) = entries.map.remove(&old) {
                entries.bytes -= w;
            }
        }
    }

    /// Drops `key`'s entry, if any.
    pub fn remove(&self, key: &K) {
        let mut guard = self.lock();
        let entries = &mut *guard;
        if let Some((_, weight)) = entries.map.remove(key) {
            entries.bytes -= weight;
            entries.order.retain(|k| k != key);
        }
    }

    /// The bytes held, as weighed.
    pub fn weight(&self) -> usize {
        self.lock().bytes
    }
}

/// A manifest's weight: its bytes and media type.
pub fn manifest_weight(m: &Manifest) -> usize {
    m.bytes.len() + m.media_type.len()
}

type TagKey = (RepositoryName, Reference);

/// Calls of one key in flight at the same moment share one call; the first caller to finish retires the shared
/// answer, so the next call goes upstream afresh (nothing is cached beyond the overlap).
struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<Result<V>>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    fn new() -> Self {
        SingleFlight { in_flight: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<Result<V>>>>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn run<F: Future<Output = Result<V>>>(&self, key: K, call: impl FnOnce() -> F) -> Result<V> {
        let cell = self.lock().entry(key.clone()).or_default().clone();
        // Retired on the way out, however that is: a caller cancelled mid-call must not leave its entry behind.
        let _retire = Retire { flight: self, key: &key, cell: &cell };
        cell.get_or_init(call).await.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

struct Retire<'a, K: Hash + Eq + Clone, V: Clone> {
    flight: &'a SingleFlight<K, V>,
    key: &'a K,
    cell: &'a Arc<OnceCell<Result<V>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Retire<'_, K, V> {
    fn drop(&mut self) {
        let mut in_flight = self.flight.lock();
        if in_flight.get(self.key).is_some_and(|c| Arc::ptr_eq(c, self.cell)) {
            in_flight.remove(self.key);
        }
    }
}

/// The upstream port, decorated: single-flight tag HEADs, cached immutable manifests, optional tag TTL.
pub struct CachingUpstream {
    inner: Arc<dyn Upstream>,
    manifests: BoundedMap<(RepositoryName, Digest), Manifest>,
    heads: SingleFlight<TagKey, ManifestHead>,
    gets: SingleFlight<(RepositoryName, Digest), Manifest>,
    tag_ttl: Option<Duration>,
    recent_heads: BoundedMap<TagKey, (Instant, ManifestHead)>,
    blobs: SingleFlight<(RepositoryName, Digest), BlobLocation>,
    recent_blobs: BoundedMap<(RepositoryName, Digest), (Instant, BlobLocation)>,
}

/// How long a blob's location is handed out again without asking upstream: far below the lifetime of the presigned
/// URLs registries redirect to (Docker Hub, GHCR, ECR: minutes), long enough that a pull's blobs cost one lookup.
pub const BLOB_LOCATION_TTL: Duration = Duration::from_secs(30);

impl CachingUpstream {
    /// `max_bytes` bounds the manifests kept; tag heads and blob locations (a few hundred bytes each) get a
    /// sixteenth of it each on top.
    pub fn new(inner: Arc<dyn Upstream>, capacity: usize, max_bytes: usize, tag_ttl: Option<Duration>) -> Self {
        CachingUpstream {
            inner,
            manifests: BoundedMap::new(capacity, max_bytes, manifest_weight),
            heads: SingleFlight::new(),
            gets: SingleFlight::new(),
            tag_ttl,
            recent_heads: BoundedMap::new(capacity, max_bytes / 16, |(_, h)| h.media_type.len()),
            blobs: SingleFlight::new(),
            recent_blobs: BoundedMap::new(capacity, max_bytes / 16, |(_, b)| b.url.len()),
        }
    }

    /// A manifest already fetched by digest, without asking upstream.
    fn cached(&self, repository: &RepositoryName, digest: &Digest) -> Option<Manifest> {
        self.manifests.get(&(repository.clone(), digest.clone()))
    }

    /// [`Self::cached`], noting the lookup in the request's record.
    fn cached_noted(&self, repository: &RepositoryName, digest: &Digest) -> Option<Manifest> {
        let manifest = self.cached(repository, digest);
        observe::cache(Cache::Manifest, manifest.is_some());
        manifest
    }

    async fn shared_head(&self, key: TagKey, accept: &[String]) -> Result<ManifestHead> {
        let result = self.heads.run(key.clone(), || self.inner.head_manifest(&key.0, &key.1, accept)).await;
        if let (Ok(head), Some(_)) = (&result, self.tag_ttl) {
            self.recent_heads.insert(key, (Instant::now(), head.clone()));
        }
        result
    }
}

#[async_trait::async_trait]
impl Upstream for CachingUpstream {
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead> {
        if let Reference::Digest(digest) = reference
            && let Some(m) = self.cached_noted(repository, digest)
        {
            return Ok(ManifestHead { digest: m.digest, media_type: m.media_type, size: m.bytes.len() as u64 });
        }
        let key = (repository.clone(), reference.clone());
        if let Some(ttl) = self.tag_ttl {
            let recent = self.recent_heads.get(&key).filter(|(at, _)| at.elapsed() < ttl);
            observe::cache(Cache::Tag, recent.is_some());
            if let Some((_, head)) = recent {
                return Ok(head);
            }
        }
        self.shared_head(key, accept).await
    }

    async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        if let Reference::Digest(digest) = reference
            && let Some(m) = self.cached_noted(repository, digest)
        {
            return Ok(m);
        }
        let fetch = || async {
            let manifest = self.inner.get_manifest(repository, reference, accept).await?;
            // Whatever the reference, the bytes are immutable under their digest (the adapter verified it). Kept
            // before the shared call retires, so that no caller in between finds neither.
            self.manifests.insert((repository.clone(), manifest.digest.clone()), manifest.clone());
            Ok(manifest)
        };
        match reference {
            // A fleet asking for one new index or image at once: one upstream GET.
            Reference::Digest(digest) => self.gets.run((repository.clone(), digest.clone()), fetch).await,
            Reference::Tag(_) => fetch().await,
        }
    }

    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        let key = (repository.clone(), digest.clone());
        let recent = self.recent_blobs.get(&key).filter(|(at, _)| at.elapsed() < BLOB_LOCATION_TTL);
        observe::cache(Cache::Blob, recent.is_some());
        if let Some((_, location)) = recent {
            return Ok(location);
        }
        let location = self.blobs.run(key.clone(), || self.inner.blob_location(repository, digest)).await?;
        self.recent_blobs.insert(key, (Instant::now(), location.clone()));
        Ok(location)
    }

    // Configs are read once per child digest: the service keeps what it reads of them (requirements), not the bytes.
    async fn small_blob(&self, repository: &RepositoryName, digest: &Digest, max_bytes: usize) -> Result<Bytes> {
        self.inner.small_blob(repository, digest, max_bytes).await
    }

    // Tag lists and referrers change at any time: always asked upstream.
    async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        self.inner.tags(repository, n, last).await
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        self.inner.referrers(repository, digest, artifact_type).await
    }

    fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        self.inner.name_in_namespace(host, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// `n` callers at once, each on its own task with its own clone of `shared`; their answers, in order.
    async fn at_once<S, T, Fut>(n: usize, shared: &S, call: impl Fn(S) -> Fut) -> Vec<T>
    where
        S: Clone,
        T: Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(call(shared.clone()))).collect();
        let mut answers = Vec::with_capacity(n);
        for task in tasks {
            answers.push(task.await.expect("a caller panicked"));
        }
        answers
    }

    /// A spy upstream that counts calls and answers slowly enough for HEADs to overlap.
    #[derive(Default)]
    struct Spy {
        heads: AtomicUsize,
        gets: AtomicUsize,
        blobs: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Upstream for Spy {
        async fn head_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<ManifestHead> {
            self.heads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(ManifestHead { digest: Digest::sha256_of(b"m"), media_type: "x".into(), size: 1 })
        }
        async fn get_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<Manifest> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Manifest { digest: Digest::sha256_of(b"m"), media_type: "x".into(), bytes: Bytes::from_static(b"m") })
        }
        async fn blob_location(&self, _: &RepositoryName, d: &Digest) -> Result<BlobLocation> {
            self.blobs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if d == &Digest::sha256_of(b"missing") {
                return Err(Error::new(crate::ErrorCode::BlobUnknown, "no such blob"));
            }
            Ok(BlobLocation { url: format!("http://storage/{d}") })
        }
    }

    #[tokio::test]
    async fn concurrent_tag_checks_share_one_head_and_digests_are_cached() {
        let spy = Arc::new(Spy::default());
        let cache = Arc::new(CachingUpstream::new(spy.clone(), 16, 1 << 20, None));
        let repo: RepositoryName = "org/app".parse().unwrap();
        let tag: Reference = "latest".parse().unwrap();
        let shared = (cache.clone(), repo.clone(), tag.clone());
        for answer in
            at_once(20, &shared, |(cache, repo, tag)| async move { cache.head_manifest(&repo, &tag, &[]).await }).await
        {
            assert!(answer.is_ok());
        }
        assert_eq!(spy.heads.load(Ordering::SeqCst), 1);
        cache.head_manifest(&repo, &tag, &[]).await.unwrap();
        assert_eq!(spy.heads.load(Ordering::SeqCst), 2, "a later check goes upstream again");

        let by_digest = Reference::Digest(Digest::sha256_of(b"m"));
        for _ in 0..3 {
            cache.get_manifest(&repo, &by_digest, &[]).await.unwrap();
            cache.head_manifest(&repo, &by_digest, &[]).await.unwrap();
        }
        assert_eq!(spy.gets.load(Ordering::SeqCst), 1);
        assert_eq!(spy.heads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn tag_ttl_reuses_a_recent_head() {
        let spy = Arc::new(Spy::default());
        let cache = CachingUpstream::new(spy.clone(), 16, 1 << 20, Some(Duration::from_secs(60)));
        let repo: RepositoryName = "org/app".parse().unwrap();
        let tag: Reference = "latest".parse().unwrap();
        for _ in 0..3 {
            cache.head_manifest(&repo, &tag, &[]).await.unwrap();
        }
        assert_eq!(spy.heads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_gets_of_one_digest_share_one_request() {
        let spy = Arc::new(Spy::default());
        let cache = Arc::new(CachingUpstream::new(spy.clone(), 16, 1 << 20, None));
        let repo: RepositoryName = "org/app".parse().unwrap();
        let by_digest = Reference::Digest(Digest::sha256_of(b"m"));
        let shared = (cache.clone(), repo.clone(), by_digest.clone());
        for answer in
            at_once(
                20,
                &shared,
                |(cache, repo, reference)| async move { cache.get_manifest(&repo, &reference, &[]).await },
            )
            .await
        {
            answer.unwrap();
        }
        assert_eq!(spy.gets.load(Ordering::SeqCst), 1);
        assert_eq!(cache.gets.len(), 0, "nothing left in flight");
    }

    #[tokio::test]
    async fn the_tag_window_bounds_heads_by_time_and_none_checks_every_time() {
        assert_eq!(CacheOptions::default().tag_ttl, Some(DEFAULT_TAG_TTL), "on by default");
        let repo: RepositoryName = "org/app".parse().unwrap();
        let tag: Reference = "latest".parse().unwrap();
        // the window: one HEAD for every check within it, another once it is over
        let spy = Arc::new(Spy::default());
        let cache = Arc::new(CachingUpstream::new(spy.clone(), 16, 1 << 20, Some(Duration::from_millis(300))));
        let shared = (cache.clone(), repo.clone(), tag.clone());
        for answer in
            at_once(20, &shared, |(cache, repo, tag)| async move { cache.head_manifest(&repo, &tag, &[]).await }).await
        {
            answer.unwrap();
        }
        cache.head_manifest(&repo, &tag, &[]).await.unwrap();
        assert_eq!(spy.heads.load(Ordering::SeqCst), 1, "in flight together, then within the window");
        tokio::time::sleep(Duration::from_millis(310)).await;
        cache.head_manifest(&repo, &tag, &[]).await.unwrap();
        assert_eq!(spy.heads.load(Ordering::SeqCst), 2, "the window is over: asked again");
        // none (`--tag-ttl 0`): every check one after the other goes upstream, as before the window
        let spy = Arc::new(Spy::default());
        let cache = CachingUpstream::new(spy.clone(), 16, 1 << 20, None);
        for _ in 0..3 {
            cache.head_manifest(&repo, &tag, &[]).await.unwrap();
        }
        assert_eq!(spy.heads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_blob_lookups_share_one_request_and_locations_are_kept_briefly() {
        let spy = Arc::new(Spy::default());
        let cache = Arc::new(CachingUpstream::new(spy.clone(), 16, 1 << 20, None));
        let repo: RepositoryName = "org/app".parse().unwrap();
        for (blob, ok) in [(Digest::sha256_of(b"layer"), true), (Digest::sha256_of(b"missing"), false)] {
            let before = spy.blobs.load(Ordering::SeqCst);
            let shared = (cache.clone(), repo.clone(), blob.clone());
            for r in
                at_once(10, &shared, |(cache, repo, blob)| async move { cache.blob_location(&repo, &blob).await }).await
            {
                assert_eq!(r.is_ok(), ok);
                if let Ok(loc) = r {
                    assert_eq!(loc.url, format!("http://storage/{blob}"));
                }
            }
            assert_eq!(spy.blobs.load(Ordering::SeqCst), before + 1, "one upstream request for 10 overlapping lookups");
            let _ = cache.blob_location(&repo, &blob).await;
            let later = if ok { before + 1 } else { before + 2 };
            assert_eq!(spy.blobs.load(Ordering::SeqCst), later, "a location is reused for a while; a failure is not");
        }
    }

    #[tokio::test]
    async fn a_cancelled_caller_leaves_no_single_flight_entry() {
        let flight: SingleFlight<u32, u32> = SingleFlight::new();
        let never = flight.run(1, std::future::pending::<Result<u32>>);
        assert!(tokio::time::timeout(Duration::from_millis(5), never).await.is_err());
        assert_eq!(flight.len(), 0);
    }

    #[test]
    fn bounded_map_forgets_oldest() {
        let m = BoundedMap::new(2, usize::MAX, |_: &&str| 0);
        m.insert(1, "a");
        m.insert(2, "b");
        m.insert(3, "c");
        assert_eq!((m.get(&1), m.get(&2), m.get(&3)), (None, Some("b"), Some("c")));
    }

    #[test]
    fn bounded_map_keeps_to_its_byte_budget() {
        let m = BoundedMap::new(1000, 10 * (1000 + ENTRY_OVERHEAD), |v: &Vec<u8>| v.len());
        for i in 0..100 {
            m.insert(i, vec![0u8; 1000]);
            assert!(m.weight() <= 10 * (1000 + ENTRY_OVERHEAD));
        }
        assert!(m.get(&89).is_none() && m.get(&90).is_some() && m.get(&99).is_some(), "the newest ten stay");
        m.insert(1000, vec![0u8; 1 << 20]);
        assert!(m.get(&1000).is_none(), "a value over the whole budget is not kept");
        assert!(m.get(&99).is_some(), "and pushes nothing out");
        m.insert(99, vec![0u8; 10]);
        assert_eq!(m.weight(), 9 * (1000 + ENTRY_OVERHEAD) + 10 + ENTRY_OVERHEAD, "a replaced value is reweighed");
    }
}
