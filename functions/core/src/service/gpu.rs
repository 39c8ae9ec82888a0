//! The NVIDIA requirements of an index's children: child manifest → config digest → config → `NVIDIA_REQUIRE_*`
//! (see [`crate::nvidia`]). Read once per child digest: kept in memory (bounded) and in the store (bounded by each
//! store), and concurrent lookups of one digest share one read. A filtered index in the caches needs none of it, so
//! a warm pull makes no request more than before.

use super::{ACCEPT, RegistryService};
use crate::error::{ErrorCode, Result};
use crate::filter;
use crate::nvidia::{GpuRequirements, Requirements};
use crate::ports::{Manifest, Upstream};
use crate::reference::{Digest, Reference, RepositoryName};
use serde::Deserialize;

/// Children of one index whose configs are read at most; the rest count as having no requirement (logged).
pub const MAX_CHILDREN: usize = 64;
/// Bytes of a config read at most. Configs are kilobytes (history included, tens of KiB); a larger one is no config
/// MetaHub needs to read: refused without reading on, and counted as no requirement.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

impl RegistryService {
    /// The NVIDIA requirements of every platform child of `index` (attestations and nested indexes have none).
    pub async fn gpu_requirements(&self, repository: &RepositoryName, index: &Manifest) -> Result<GpuRequirements> {
        self.gpu_requirements_of(repository, child_digests(repository, index)?).await
    }

    /// The NVIDIA requirements of the children `digests` (as an index spells them) of `repository`.
    pub(super) async fn gpu_requirements_of(
        &self,
        repository: &RepositoryName,
        digests: Vec<String>,
    ) -> Result<GpuRequirements> {
        let mut requirements = GpuRequirements::new();
        for text in digests {
            // A digest the index spells wrong is the index's problem, reported by the pull of that child.
            let Ok(digest) = text.parse::<Digest>() else { continue };
            let read = || self.read_gpu_requirements(repository, &digest);
            let child = self.cache.gpu_requirements(&digest, read).await?;
            if !child.is_empty() {
                requirements.insert(text, child);
            }
        }
        Ok(requirements)
    }

    /// One child's requirements: the store's, else read upstream ([`read_requirements`]) and stored, so that it is
    /// read (and a malformed one logged) once; a failing store fails the pull, as for every other store read.
    async fn read_gpu_requirements(&self, repository: &RepositoryName, digest: &Digest) -> Result<Requirements> {
        if let Some(kept) = self.store.gpu_requirements(digest).await? {
            return Ok(kept);
        }
        let requirements = read_requirements(self.upstream(), repository, digest).await?;
        if let Some(why) = requirements.malformed() {
            // Logged once: the requirement is kept by digest, and never read again.
            tracing::warn!(%repository, child = %digest, why, "malformed NVIDIA_REQUIRE_*: the NVIDIA runtime refuses to start this build, so no machine type is served it");
        }
        self.store.put_gpu_requirements(digest, &requirements).await?;
        Ok(requirements)
    }
}

/// The NVIDIA requirements of child manifest `digest` of `repository`, read upstream: the child, then its config
/// (at most [`MAX_CONFIG_BYTES`]). A config that is oversized, missing or not JSON counts as no requirement (what the
/// NVIDIA runtime finds in it too); an upstream that is down or limiting is an error.
pub async fn read_requirements(
    upstream: &dyn Upstream,
    repository: &RepositoryName,
    digest: &Digest,
) -> Result<Requirements> {
    let read = async {
        let child = upstream.get_manifest(repository, &Reference::Digest(digest.clone()), &ACCEPT).await?;
        let Some(config) = config_digest(&child) else { return Ok(Ok(Requirements::default())) };
        let bytes = upstream.small_blob(repository, &config, MAX_CONFIG_BYTES).await?;
        Ok::<_, crate::Error>(Requirements::from_config(&bytes))
    };
    match read.await {
        Ok(Ok(requirements)) => Ok(requirements),
        Ok(Err(why)) => {
            tracing::warn!(%repository, child = %digest, why, "image config unreadable: counted as no NVIDIA requirement");
            Ok(Requirements::default())
        }
        // The upstream is down or limiting: the pull fails as any other would (and a stale answer may serve).
        Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::TooManyRequests) => Err(e),
        Err(e) => {
            // Oversized, missing, not matching its digest: the upstream's answer, which asking again won't change.
            tracing::warn!(%repository, child = %digest, error = %e, "image config not read: counted as no NVIDIA requirement");
            Ok(Requirements::default())
        }
    }
}

/// The NVIDIA requirements of every platform child of `index`, read upstream without a store (`metahub explain`).
pub async fn read_index_requirements(
    upstream: &dyn Upstream,
    repository: &RepositoryName,
    index: &Manifest,
) -> Result<GpuRequirements> {
    let mut requirements = GpuRequirements::new();
    for text in child_digests(repository, index)? {
        let Ok(digest) = text.parse::<Digest>() else { continue };
        let child = read_requirements(upstream, repository, &digest).await?;
        if !child.is_empty() {
            requirements.insert(text, std::sync::Arc::new(child));
        }
    }
    Ok(requirements)
}

/// The digests of `index`'s platform children (not attestations), at most [`MAX_CHILDREN`].
fn child_digests(repository: &RepositoryName, index: &Manifest) -> Result<Vec<String>> {
    let parsed = filter::Index::parse(&index.bytes)?;
    let mut digests: Vec<String> =
        parsed.entries.into_iter().filter(|e| e.attests.is_none()).map(|e| e.digest).collect();
    digests.dedup();
    if digests.len() > MAX_CHILDREN {
        tracing::warn!(%repository, index = %index.digest, children = digests.len(), "index has more children than MetaHub reads the configs of; the rest count as having no NVIDIA requirement");
        digests.truncate(MAX_CHILDREN);
    }
    Ok(digests)
}

/// The config descriptor's digest of an image manifest; `None` for an index or anything without one.
fn config_digest(manifest: &Manifest) -> Option<Digest> {
    #[derive(Deserialize)]
    struct Image {
        config: Descriptor,
    }
    #[derive(Deserialize)]
    struct Descriptor {
        digest: String,
    }
    if filter::is_index_media_type(&manifest.media_type) {
        return None;
    }
    serde_json::from_slice::<Image>(&manifest.bytes).ok()?.config.digest.parse().ok()
}
