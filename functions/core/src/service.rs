//! The pull flow: what a manifest or blob request by a machine type is answered with, over the ports.

use crate::cache::{CacheOptions, CachingUpstream, Kept, PullCache};
use crate::error::{Error, ErrorCode, Result};
use crate::filter::{self, ACCEPT_ALL};
use crate::machine::MachineType;
use crate::observe::{self, Answer, ObservedUpstream};
use crate::ports::{BlobLocation, Manifest, Store, Upstream};
use crate::reference::{Digest, ImageRef, Reference, RepositoryName};
use std::sync::{Arc, LazyLock};

mod listing;
mod referrers;
mod signatures;

pub use referrers::{ReferrersIndex, is_referrers_tag};
pub use signatures::SelectionSigning;

static ACCEPT: LazyLock<Vec<String>> = LazyLock::new(|| ACCEPT_ALL.iter().map(|s| s.to_string()).collect());

/// The registry's read side, shared by every transport.
pub struct RegistryService {
    store: Arc<dyn Store>,
    /// The upstream behind its caches, and what the pull flow keeps in memory.
    cache: PullCache,
    index_digest_pulls: IndexDigestPulls,
    /// Sign each filtered index generated (`--selection-signing-key`): off when `None`.
    selection_signing: Option<SelectionSigning>,
}

impl RegistryService {
    pub fn new(store: Arc<dyn Store>, upstream: Arc<dyn Upstream>, options: CacheOptions) -> Self {
        RegistryService {
            store,
            cache: PullCache::new(Arc::new(ObservedUpstream::new(upstream)), &options),
            index_digest_pulls: IndexDigestPulls::default(),
            selection_signing: None,
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

    /// The upstream port, through its caches.
    fn upstream(&self) -> &CachingUpstream {
        self.cache.upstream()
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
                self.upstream().get_manifest(repository, reference, &ACCEPT).await
            }
            // MetaHub's own signature of a filtered index it generated; any other `.sig` tag is the upstream's.
            Reference::Tag(tag) if self.selection_signing.is_some() => {
                match crate::cosign::signature_tag_subject(tag.as_str()) {
                    Some(subject) => match self.selection_signature(repository, &subject).await? {
                        Some(signature) => {
                            observe::answer(Answer::Generated);
                            Ok(signature)
                        }
                        None => self.manifest_by_tag(repository, reference, machine_type).await,
                    },
                    None => self.manifest_by_tag(repository, reference, machine_type).await,
                }
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
        match self.fresh_manifest_by_tag(repository, tag, &machine).await {
            Ok(manifest) => {
                self.cache.keep_served(repository, tag, &machine, &manifest);
                Ok(manifest)
            }
            // Kept by what filtering depends on: after a change of features, an index served before does not fit.
            Err(e) if upstream_down(&e) => match self.cache.last_served(repository, tag, &machine) {
                Some((age, stale)) => {
                    observe::answer(Answer::Stale);
                    tracing::warn!(%repository, %tag, machine_type, error = %e, digest = %stale.digest, age_s = age.as_secs(), "upstream failing: serving the last index served (stale)");
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
        machine: &MachineType,
    ) -> Result<Manifest> {
        let head = self.upstream().head_manifest(repository, tag, &ACCEPT).await?;
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
            let manifest = self.upstream().get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced)?;
            if !filter::is_index_media_type(&manifest.media_type) {
                observe::answer(Answer::Verbatim);
                return Ok(manifest);
            }
        }
        let manifest = match self.cache.filtered(&head.digest, machine) {
            Some(filtered) => filtered,
            None => {
                let index = self.upstream().get_manifest(repository, &by_digest, &ACCEPT).await.map_err(announced)?;
                if !filter::is_index_media_type(&index.media_type) {
                    observe::answer(Answer::Verbatim);
                    return Ok(index);
                }
                let filtered = filter::filter_index(&index, machine)?;
                self.cache.keep_filtered(&head.digest, machine, &filtered);
                filtered
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
        if !self.cache.has_generated(repository, &manifest.digest) {
            self.store.put_generated_manifest(repository, &manifest).await?;
            self.remember_source(repository, &manifest.digest, &head.digest).await?;
            self.sign_selection(repository, &manifest).await?;
            self.cache.keep_generated(repository, &manifest);
        }
        Ok(manifest)
    }

    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        machine_type: &str,
    ) -> Result<Manifest> {
        match self.cache.manifest(repository, digest) {
            Some(Kept::Generated(m)) => {
                observe::answer(Answer::Generated);
                return Ok(m);
            }
            Some(Kept::Upstream(m)) => {
                observe::answer(Answer::Verbatim);
                return self.upstream_by_digest(repository, m, machine_type).await;
            }
            None => {}
        }
        if let Some(m) = self.store.generated_manifest(repository, digest).await? {
            observe::answer(Answer::Generated);
            self.cache.keep_generated(repository, &m);
            return Ok(m);
        }
        observe::answer(Answer::Verbatim);
        let m = self.upstream().get_manifest(repository, &Reference::Digest(digest.clone()), &ACCEPT).await?;
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
        let filtered = filter::filter_index(&manifest, &machine)?;
        if filtered.digest == manifest.digest {
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
        self.upstream().get_manifest(&image.name, &image.reference, &ACCEPT).await
    }

    pub async fn blob(&self, repository: &RepositoryName, digest: &Digest) -> Result<BlobLocation> {
        observe::answer(Answer::Redirect);
        self.upstream().blob_location(repository, digest).await
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

impl std::fmt::Display for IndexDigestPulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexDigestPulls::Verbatim => "verbatim",
            IndexDigestPulls::Refuse => "refuse",
        })
    }
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

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
