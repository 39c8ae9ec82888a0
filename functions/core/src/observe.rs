//! What happened while answering one request, for the access log and the metrics.
//!
//! The transport opens a [`Record`] around a request with [`record`]; the service, the caches and the upstream
//! decorator [`ObservedUpstream`] note into it as they work. The record lives in a task-local so that the ports and
//! the service's signatures stay free of it; outside a record (the CLI, unit tests) the notes go nowhere.

use crate::error::Result;
use crate::ports::{BlobLocation, Manifest, ManifestHead, Referrers, TagPage, Upstream};
use crate::reference::{Digest, Reference, RepositoryName};
use bytes::Bytes;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

tokio::task_local! {
    static CURRENT: Arc<Mutex<Record>>;
}

/// How a manifest or blob request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An index reduced for the machine type (a digest MetaHub generated).
    Filtered,
    /// The upstream's bytes as they are: a single manifest, an index filtering drops nothing from, a pull by digest.
    Verbatim,
    /// The last answer served for the tag, because the upstream is failing.
    Stale,
    /// A filtered index fetched again by its own digest.
    Generated,
    /// A blob: a redirect to where the client fetches it.
    Redirect,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Filtered => "filtered",
            Answer::Verbatim => "verbatim",
            Answer::Stale => "stale",
            Answer::Generated => "generated",
            Answer::Redirect => "redirect",
        }
    }
}

/// The kinds of request MetaHub makes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    Head,
    Get,
    Blob,
    Tags,
    Referrers,
    /// A small blob: an image config, for its NVIDIA requirements.
    Config,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Head => "head",
            UpstreamKind::Get => "get",
            UpstreamKind::Blob => "blob",
            UpstreamKind::Tags => "tags",
            UpstreamKind::Referrers => "referrers",
            UpstreamKind::Config => "config",
        }
    }
}

/// One request made upstream: its kind, `ok` or the registry error code it ended with, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamCall {
    pub kind: UpstreamKind,
    pub result: &'static str,
    pub duration: Duration,
}

/// The in-process caches that can spare an upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Immutable manifests by digest (upstream ones and generated indexes).
    Manifest,
    /// A tag's recent HEAD (only with a tag TTL).
    Tag,
    /// Filtered indexes by (upstream index, machine type).
    Filtered,
    /// A blob's recent location.
    Blob,
}

impl Cache {
    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Manifest => "manifest",
            Cache::Tag => "tag",
            Cache::Filtered => "filtered",
            Cache::Blob => "blob",
        }
    }
}

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    Ok,
    /// Wrong login or password.
    Failed,
    /// Refused unchecked: too many failures for the account or source.
    Throttled,
}

impl LoginResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::Failed => "failed",
            LoginResult::Throttled => "throttled",
        }
    }
}

/// What one request did. Never holds a secret: no password, token or URL with a query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// The machine type the request acted as (a valid token's, or the one a login was granted).
    pub machine_type: Option<String>,
    /// The login name a token request tried, and how it ended.
    pub login: Option<(String, LoginResult)>,
    pub answer: Option<Answer>,
    pub upstream: Vec<UpstreamCall>,
    /// Cache lookups: which cache, and whether it answered.
    pub cache: Vec<(Cache, bool)>,
}

impl Record {
    pub fn cache_hits(&self) -> usize {
        self.cache.iter().filter(|(_, hit)| *hit).count()
    }

    pub fn cache_misses(&self) -> usize {
        self.cache.len() - self.cache_hits()
    }

    /// `head:ok get:ok`, in the order they were made.
    pub fn upstream_summary(&self) -> String {
        let calls: Vec<String> = self.upstream.iter().map(|c| format!("{}:{}", c.kind.as_str(), c.result)).collect();
        calls.join(" ")
    }
}

/// Runs `future` with a fresh record for it to note into; answers its output and the record.
pub async fn record<F: Future>(future: F) -> (F::Output, Record) {
    let current = Arc::new(Mutex::new(Record::default()));
    let output = CURRENT.scope(current.clone(), future).await;
    let record = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (output, record)
}

fn note(change: impl FnOnce(&mut Record)) {
    let _ = CURRENT.try_with(|current| change(&mut current.lock().unwrap_or_else(|p| p.into_inner())));
}

pub fn answer(answer: Answer) {
    note(|r| r.answer = Some(answer));
}

pub fn machine_type(name: &str) {
    note(|r| r.machine_type = Some(name.to_owned()));
}

pub fn login(login: &str, result: LoginResult) {
    note(|r| r.login = Some((login.to_owned(), result)));
}

pub fn cache(cache: Cache, hit: bool) {
    note(|r| r.cache.push((cache, hit)));
}

/// The upstream port, decorated: every request made upstream is timed and noted in the current record.
pub struct ObservedUpstream {
    inner: Arc<dyn Upstream>,
}

impl ObservedUpstream {
    pub fn new(inner: Arc<dyn Upstream>) -> Self {
        ObservedUpstream { inner }
    }
}

async fn timed<T>(kind: UpstreamKind, call: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    let duration = started.elapsed();
    note(|r| r.upstream.push(UpstreamCall { kind, result: outcome, duration }));
    result
}

#[async_trait::async_trait]
impl Upstream for ObservedUpstream {
    async fn head_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ManifestHead> {
        timed(UpstreamKind::Head, self.inner.head_manifest(repository, reference, accept)).await
    }

    async fn get_manifest(
        &self,
        repository: &RepositoryName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<Manifest> {
        timed(UpstreamKind::Get, self.inner.get_manifest(repository, reference, accept)).await
    }

    async fn blob_location(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        timed(UpstreamKind::Blob, self.inner.blob_location(repository, digest)).await
    }

    async fn small_blob(&self, repository: &RepositoryName, digest: &Digest, max_bytes: usize) -> Result<Bytes> {
        timed(UpstreamKind::Config, self.inner.small_blob(repository, digest, max_bytes)).await
    }

    async fn tags(&self, repository: &RepositoryName, n: Option<usize>, last: Option<&str>) -> Result<TagPage> {
        timed(UpstreamKind::Tags, self.inner.tags(repository, n, last)).await
    }

    async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Referrers>> {
        timed(UpstreamKind::Referrers, self.inner.referrers(repository, digest, artifact_type)).await
    }

    fn name_in_namespace(&self, host: &str, name: &RepositoryName) -> Result<RepositoryName> {
        self.inner.name_in_namespace(host, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorCode};
    use bytes::Bytes;

    struct Failing;

    #[async_trait::async_trait]
    impl Upstream for Failing {
        async fn head_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<ManifestHead> {
            Err(Error::new(ErrorCode::Unavailable, "down"))
        }
        async fn get_manifest(&self, _: &RepositoryName, _: &Reference, _: &[String]) -> Result<Manifest> {
            Ok(Manifest { digest: Digest::sha256_of(b"m"), media_type: "x".into(), bytes: Bytes::from_static(b"m") })
        }
        async fn blob_location(&self, _: &RepositoryName, _: &Digest) -> Result<BlobLocation> {
            Ok(BlobLocation { url: "http://storage/b".into() })
        }
    }

    #[tokio::test]
    async fn upstream_calls_and_notes_land_in_the_record_of_their_request_only() {
        let upstream = ObservedUpstream::new(Arc::new(Failing));
        let repo: RepositoryName = "org/app".parse().unwrap();
        let tag: Reference = "latest".parse().unwrap();
        let ((), record) = record(async {
            machine_type("skylake");
            assert!(upstream.head_manifest(&repo, &tag, &[]).await.is_err());
            assert!(upstream.get_manifest(&repo, &tag, &[]).await.is_ok());
            cache(Cache::Manifest, true);
            answer(Answer::Stale);
        })
        .await;
        assert_eq!(record.machine_type.as_deref(), Some("skylake"));
        assert_eq!(record.answer, Some(Answer::Stale));
        assert_eq!(record.upstream_summary(), "head:UNAVAILABLE get:ok");
        assert_eq!((record.cache_hits(), record.cache_misses()), (1, 0));

        // Outside a record, notes go nowhere and nothing fails.
        answer(Answer::Filtered);
        assert!(upstream.blob_location(&repo, &Digest::sha256_of(b"b")).await.is_ok());
    }
}
