//! The pull flow: what a manifest or blob request by a machine type is answered with, over the ports.

use crate::cache::{CacheOptions, CachingUpstream, Kept, PullCache};
use crate::error::{Error, ErrorCode, Result};
use crate::filter::{self, ACCEPT_ALL};
use crate::machine::{MachineType, MachineTypeName, MatchMode};
use crate::observe::{self, Answer, ObservedUpstream};
use crate::ports::{Account, BlobLocation, ChildRecord, Manifest, Store, Upstream};
use crate::reference::{Digest, ImageRef, Reference, RepositoryName};
use std::sync::{Arc, LazyLock};

mod gpu;
mod listing;
mod referrers;
mod signatures;

pub use referrers::{ReferrersIndex, is_referrers_tag};
pub use signatures::SelectionSigning;

pub use gpu::{MAX_CHILDREN, MAX_CONFIG_BYTES, read_index_requirements, read_requirements};

static ACCEPT: LazyLock<Vec<String>> = LazyLock::new(|| ACCEPT_ALL.iter().map(|s| s.to_string()).collect());

/// The registry's read side, shared by every transport.
pub struct RegistryService {
    store: Arc<dyn Store>,
    /// The upstream behind its caches, and what the pull flow keeps in memory.
    cache: PullCache,
    index_digest_pulls: IndexDigestPulls,
    /// The upstream itself, for its naming rules ([`Upstream::canonical_name`]).
    naming: Arc<dyn Upstream>,
    /// Sign each filtered index generated (`--selection-signing-key`): off when `None`.
    selection_signing: Option<SelectionSigning>,
}

impl RegistryService {
    pub fn new(store: Arc<dyn Store>, upstream: Arc<dyn Upstream>, options: CacheOptions) -> Self {
        RegistryService {
            store,
            cache: PullCache::new(Arc::new(ObservedUpstream::new(upstream.clone())), &options),
            index_digest_pulls: IndexDigestPulls::default(),
            naming: upstream,
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

    /// Whether `account` may pull `repository`, its allow-list read by the upstream's naming rules
    /// ([`Account::may_pull_named`]).
    pub fn may_pull(&self, account: &Account, repository: &RepositoryName) -> bool {
        account.may_pull_named(repository, &|name| self.naming.canonical_name(name))
    }

    /// The upstream port, through its caches.
    fn upstream(&self) -> &CachingUpstream {
        self.cache.upstream()
    }

    /// The machine type an account pulls as; a token naming a deleted type is refused.
    pub async fn machine_type(&self, name: &MachineTypeName) -> Result<MachineType> {
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
        machine_type: &MachineTypeName,
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
        machine_type: &MachineTypeName,
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
                    tracing::warn!(%repository, %tag, %machine_type, error = %e, digest = %stale.digest, age_s = age.as_secs(), "upstream failing: serving the last index served (stale)");
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
                self.record_children(repository, &index).await?;
                // The driver dimension: each child's NVIDIA requirements, read once per child digest.
                let requirements = self.gpu_requirements(repository, &index).await?;
                let filtered = filter::filter_index_gpu(&index, machine, &requirements)?;
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

    /// A manifest by digest is never filtered (clients verify digests) and never a build the caller cannot run:
    /// a generated index (made for any machine type), an upstream index or a child is served when every build the
    /// caller's clients may take from it is one the caller runs, else refused naming what to pull instead.
    async fn manifest_by_digest(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        machine_type: &MachineTypeName,
    ) -> Result<Manifest> {
        let machine = self.machine_type(machine_type).await?;
        let (manifest, generated) = self.stored_or_upstream(repository, digest).await?;
        if machine.match_mode == MatchMode::Unfiltered {
            return Ok(manifest);
        }
        if !filter::is_index_media_type(&manifest.media_type) {
            self.check_child(repository, digest, &machine).await?;
        } else if generated {
            self.check_generated(repository, &manifest, &machine).await?;
        } else {
            self.check_upstream_index(repository, &manifest, &machine).await?;
        }
        Ok(manifest)
    }

    /// The manifest `digest` names: a generated index (`true`) from memory or the store, else the upstream's.
    async fn stored_or_upstream(&self, repository: &RepositoryName, digest: &Digest) -> Result<(Manifest, bool)> {
        match self.cache.manifest(repository, digest) {
            Some(Kept::Generated(m)) => {
                observe::answer(Answer::Generated);
                return Ok((m, true));
            }
            Some(Kept::Upstream(m)) => {
                observe::answer(Answer::Verbatim);
                return Ok((m, false));
            }
            None => {}
        }
        if let Some(m) = self.store.generated_manifest(repository, digest).await? {
            observe::answer(Answer::Generated);
            self.cache.keep_generated(repository, &m);
            return Ok((m, true));
        }
        observe::answer(Answer::Verbatim);
        let m = self.upstream().get_manifest(repository, &Reference::Digest(digest.clone()), &ACCEPT).await?;
        Ok((m, false))
    }

    /// An upstream index pulled by its digest cannot be filtered (the client verifies the digest). `Refuse` names
    /// what to pull instead unless filtering keeps the index unchanged for this machine type (as when a tag pull was
    /// answered with it verbatim and containerd follows up by digest); `Verbatim` serves it when the machine runs
    /// every build its clients may take from it.
    async fn check_upstream_index(
        &self,
        repository: &RepositoryName,
        index: &Manifest,
        machine: &MachineType,
    ) -> Result<()> {
        self.record_children(repository, index).await?;
        let gpu = self.gpu_requirements(repository, index).await?;
        if self.index_digest_pulls == IndexDigestPulls::Refuse {
            let filtered = filter::filter_index_gpu(index, machine, &gpu)?;
            if filtered.digest == index.digest {
                return Ok(());
            }
            let children = pins(repository, &builds_taken(&filtered, machine));
            return Err(Error::denied(format!(
                "{} is an upstream index: pulled by its digest it cannot be filtered for machine type \"{}\", and this \
                 registry refuses such pulls; pull by tag, or by the digest of the image served: {}",
                index.digest,
                machine.name,
                children.join(", ")
            ))
            .with_detail(serde_json::json!({"indexDigest": index.digest.to_string(), "pullInstead": children})));
        }
        for choice in filter::client_choices(&index.bytes, machine)? {
            if let Some(why) = filter::cannot_run(machine, &choice.digest, &choice.platform, &gpu) {
                let own = filter::filter_index_gpu(index, machine, &gpu)
                    .map_or_else(|_| Vec::new(), |f| builds_taken(&f, machine));
                return Err(refusal(repository, &index.digest, machine, &choice.platform, why, &own));
            }
        }
        Ok(())
    }

    /// A filtered index MetaHub generated, perhaps for another machine type: its entries stand under their plain
    /// platform, so what each requires is read from the record of its child.
    async fn check_generated(
        &self,
        repository: &RepositoryName,
        generated: &Manifest,
        machine: &MachineType,
    ) -> Result<()> {
        let choices = filter::client_choices(&generated.bytes, machine)?;
        let gpu = self.gpu_requirements_of(repository, choices.iter().map(|c| c.digest.clone()).collect()).await?;
        for choice in choices {
            let platform = match choice.digest.parse::<Digest>() {
                Ok(child) => match self.child_record(repository, &child).await? {
                    Some(record) => record.platform,
                    None => (self.record_from_source(repository, &generated.digest, &child).await?)
                        .map_or(choice.platform, |r| r.platform),
                },
                Err(_) => choice.platform,
            };
            if let Some(why) = filter::cannot_run(machine, &choice.digest, &platform, &gpu) {
                let source = self.source_index(repository, &generated.digest).await.ok().flatten();
                let own = self.own_builds(repository, source.as_ref(), machine).await;
                return Err(refusal(repository, &generated.digest, machine, &platform, why, &own));
            }
        }
        Ok(())
    }

    /// A child manifest: refused when an index MetaHub read lists it under a platform the machine does not run.
    /// A child of an index MetaHub never read is served (nothing tells what it requires).
    async fn check_child(&self, repository: &RepositoryName, digest: &Digest, machine: &MachineType) -> Result<()> {
        let Some(record) = self.child_record(repository, digest).await? else {
            return Ok(());
        };
        let gpu = self.gpu_requirements_of(repository, vec![digest.to_string()]).await?;
        let Some(why) = filter::cannot_run(machine, digest.as_str(), &record.platform, &gpu) else {
            return Ok(());
        };
        let index = self.upstream().get_manifest(repository, &Reference::Digest(record.index), &ACCEPT).await.ok();
        let own = self.own_builds(repository, index.as_ref(), machine).await;
        Err(refusal(repository, digest, machine, &record.platform, why, &own))
    }

    /// The record of a child, from memory or the store.
    async fn child_record(&self, repository: &RepositoryName, digest: &Digest) -> Result<Option<ChildRecord>> {
        if let Some(record) = self.cache.child(repository, digest) {
            return Ok(Some(record));
        }
        let record = self.store.child_record(repository, digest).await?;
        if let Some(record) = &record {
            self.cache.keep_child(repository, record);
        }
        Ok(record)
    }

    /// Stores what `index` lists each child as (once per process and index): a later pull of a child by its digest,
    /// or of a generated index holding it, is judged by it on any instance. Builds with requirements come first
    /// within the bound: a child without a record is served.
    async fn record_children(&self, repository: &RepositoryName, index: &Manifest) -> Result<()> {
        if self.cache.children_recorded(repository, &index.digest) {
            return Ok(());
        }
        let mut listed = filter::children(&index.bytes)?;
        listed.sort_by_key(|l| !l.platform.has_requirements()); // stable: index order within each kind
        let records: Vec<ChildRecord> = listed
            .into_iter()
            .filter_map(|l| {
                Some(ChildRecord { digest: l.digest.parse().ok()?, platform: l.platform, index: index.digest.clone() })
            })
            .take(MAX_CHILD_RECORDS)
            .collect();
        self.store.put_child_records(repository, &records).await?;
        for record in &records {
            self.cache.keep_child(repository, record);
        }
        self.cache.note_children_recorded(repository, &index.digest);
        Ok(())
    }

    /// For a generated index stored before child records existed: records the children of the upstream index it
    /// was filtered from, and answers `child`'s.
    async fn record_from_source(
        &self,
        repository: &RepositoryName,
        generated: &Digest,
        child: &Digest,
    ) -> Result<Option<ChildRecord>> {
        let Some(index) = self.source_index(repository, generated).await? else {
            return Ok(None);
        };
        self.record_children(repository, &index).await?;
        Ok(self.cache.child(repository, child))
    }

    /// The upstream index a generated index was filtered from.
    async fn source_index(&self, repository: &RepositoryName, generated: &Digest) -> Result<Option<Manifest>> {
        let source = self.referrers_subject(repository, generated).await?;
        if source == *generated {
            return Ok(None);
        }
        let index = self.upstream().get_manifest(repository, &Reference::Digest(source), &ACCEPT).await?;
        Ok(filter::is_index_media_type(&index.media_type).then_some(index))
    }

    /// The builds this machine type is served from the upstream `index`, as its clients take them: durable pins (an
    /// upstream manifest, unlike a generated index, never expires).
    async fn own_builds(
        &self,
        repository: &RepositoryName,
        index: Option<&Manifest>,
        machine: &MachineType,
    ) -> Vec<Digest> {
        let Some(index) = index else { return Vec::new() };
        let Ok(gpu) = self.gpu_requirements(repository, index).await else { return Vec::new() };
        filter::filter_index_gpu(index, machine, &gpu).map_or_else(|_| Vec::new(), |f| builds_taken(&f, machine))
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

/// The builds `machine`'s clients take from `filtered`, the index it is served.
fn builds_taken(filtered: &Manifest, machine: &MachineType) -> Vec<Digest> {
    let choices = filter::client_choices(&filtered.bytes, machine).unwrap_or_default();
    choices.into_iter().filter_map(|c| c.digest.parse().ok()).collect()
}

/// Child records kept per upstream index at most: an index of more builds has its first ones with requirements
/// recorded, and a pull of an unrecorded child by its digest is served.
pub const MAX_CHILD_RECORDS: usize = 1024;

/// `DENIED`: the pinned digest holds a build the machine cannot run; pull by tag or by the machine's own digest.
fn refusal(
    repository: &RepositoryName,
    pinned: &Digest,
    machine: &MachineType,
    platform: &filter::Platform,
    why: String,
    own: &[Digest],
) -> Error {
    let own = pins(repository, own);
    let instead = match own.is_empty() {
        false => format!("pull by tag, or {} (the build for \"{}\")", own.join(" or "), machine.name),
        true => "pull by tag".to_owned(),
    };
    Error::denied(format!(
        "{repository}@{pinned} holds a build machine type \"{}\" cannot run ({platform}: {why}); {instead}",
        machine.name
    ))
    .with_detail(serde_json::json!({
        "digest": pinned.to_string(),
        "machineType": machine.name,
        "platform": platform.to_string(),
        "reason": why,
        "pullInstead": own,
    }))
}

fn pins(repository: &RepositoryName, digests: &[Digest]) -> Vec<String> {
    digests.iter().map(|d| format!("{repository}@{d}")).collect()
}

/// Failures of the upstream itself, as opposed to answers about the image (unknown, denied).
fn upstream_down(error: &Error) -> bool {
    matches!(error.code, ErrorCode::Unavailable | ErrorCode::BadGateway | ErrorCode::TooManyRequests)
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
