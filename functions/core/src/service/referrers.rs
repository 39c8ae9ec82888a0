//! Referrers (distribution-spec 1.1): the upstream's referrers API answer; when the upstream has none (404), the
//! index built from its `<alg>-<hex>` referrers tag; for a filtered index MetaHub generated, the referrers of the
//! upstream index it came from (signatures and SBOMs are attached to that one).

use super::RegistryService;
use crate::error::{Error, Result};
use crate::filter::OCI_INDEX;
use crate::ports::{Manifest, Referrers, Upstream as _};
use crate::reference::{Digest, Reference, RepositoryName};
use bytes::Bytes;
use serde_json::{Value, json};

/// The media type of the record that links a generated index to its upstream index; the source rides in it as a
/// parameter, because a store record's digest must hash its bytes, and the bytes may depend on the generated digest
/// only (that is what the record is looked up by).
const SOURCE_LINK_TYPE: &str = "application/vnd.metahub.filtered-from";
/// A repository no client can name (a component may not start with '_'): link records never answer a pull.
const SOURCE_LINK_NAMESPACE: &str = "_metahub-source";

/// An OCI index of referrers, and whether `artifactType` filtering was applied (`OCI-Filters-Applied`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferrersIndex {
    pub bytes: Bytes,
    pub artifact_type_filtered: bool,
}

/// Whether `tag` is a referrers tag (`sha256-<64 hex>`): it lists artifacts, not platforms, so it is never filtered.
pub fn is_referrers_tag(tag: &str) -> bool {
    tag.split_once('-').is_some_and(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().is_ok())
}

fn source_link(repository: &RepositoryName, generated: &Digest) -> (RepositoryName, Vec<u8>) {
    let bytes = json!({"filteredIndex": generated.as_str()}).to_string().into_bytes();
    (repository.with_prefix(SOURCE_LINK_NAMESPACE), bytes)
}

impl RegistryService {
    /// Remembers (in the store, for every instance) which upstream index a generated index was filtered from.
    pub(super) async fn remember_source(
        &self,
        repository: &RepositoryName,
        generated: &Digest,
        source: &Digest,
    ) -> Result<()> {
        let (name, bytes) = source_link(repository, generated);
        let link = Manifest {
            digest: Digest::sha256_of(&bytes),
            media_type: format!("{SOURCE_LINK_TYPE}; digest={source}"),
            bytes: Bytes::from(bytes),
        };
        self.store.put_generated_manifest(&name, &link).await
    }

    /// The upstream index `digest` was filtered from, when MetaHub generated it; else `digest` itself.
    pub(super) async fn referrers_subject(&self, repository: &RepositoryName, digest: &Digest) -> Result<Digest> {
        let (name, bytes) = source_link(repository, digest);
        let Some(link) = self.store.generated_manifest(&name, &Digest::sha256_of(&bytes)).await? else {
            return Ok(digest.clone());
        };
        link.media_type
            .strip_prefix(SOURCE_LINK_TYPE)
            .and_then(|rest| rest.trim_start_matches(';').trim().strip_prefix("digest="))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| Error::internal(format!("the store's source link of {digest} is malformed")))
    }

    /// The referrers of `digest` in `repository`, only those of `artifact_type` when given. None is an empty index,
    /// never 404 (distribution-spec 1.1: a registry that supports the referrers API answers 200 with an empty
    /// index, whether the subject exists or not): MetaHub always supports it, whatever the upstream does.
    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersIndex> {
        let subject = self.referrers_subject(repository, digest).await?;
        let mut found = match self.upstream().referrers(repository, &subject, artifact_type).await? {
            Some(answer) => answer,
            None => self.referrers_from_tag(repository, &subject).await?.unwrap_or_default(),
        };
        if subject != *digest
            && let Some(signature) = self.selection_signature(repository, digest).await?
        {
            // MetaHub's own signature of the filtered index (its `subject`), filtered by artifactType like the rest
            let descriptor = json!({"mediaType": signature.media_type, "digest": signature.digest.as_str(),
                "size": signature.bytes.len(), "artifactType": crate::cosign::SIGNATURE_ARTIFACT_TYPE});
            if !found.artifact_type_filtered || artifact_type == Some(crate::cosign::SIGNATURE_ARTIFACT_TYPE) {
                found.manifests.push(descriptor);
            }
        }
        Ok(referrers_index(found, artifact_type))
    }

    /// The descriptors the referrers tag `<alg>-<hex>` of `subject` lists, when the upstream has that tag.
    async fn referrers_from_tag(&self, repository: &RepositoryName, subject: &Digest) -> Result<Option<Referrers>> {
        let tag: Reference = subject.as_str().replacen(':', "-", 1).parse()?;
        let index = match self.upstream().get_manifest(repository, &tag, &[OCI_INDEX.to_owned()]).await {
            Ok(index) => index,
            Err(e) if matches!(e.code, crate::ErrorCode::ManifestUnknown | crate::ErrorCode::NameUnknown) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let value: Value = serde_json::from_slice(&index.bytes)
            .map_err(|_| Error::bad_gateway(format!("the referrers tag {tag} of {repository} is not JSON")))?;
        let manifests = match value.get("manifests") {
            Some(Value::Array(m)) => m.clone(),
            _ => return Err(Error::bad_gateway(format!("the referrers tag {tag} of {repository} is not an index"))),
        };
        Ok(Some(Referrers { manifests, artifact_type_filtered: false }))
    }
}

/// The referrers answer: an OCI index of the descriptors, filtered by `artifact_type` unless the upstream did.
fn referrers_index(found: Referrers, artifact_type: Option<&str>) -> ReferrersIndex {
    let manifests: Vec<Value> = match artifact_type {
        Some(wanted) if !found.artifact_type_filtered => found
            .manifests
            .into_iter()
            .filter(|d| d.get("artifactType").and_then(Value::as_str) == Some(wanted))
            .collect(),
        _ => found.manifests,
    };
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    ReferrersIndex { bytes: Bytes::from(index.to_string()), artifact_type_filtered: artifact_type.is_some() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheOptions;
    use crate::testing::{FakeUpstream, MemoryStore};
    use std::sync::Arc;

    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

    /// A service over an upstream without a referrers API (distribution 2.8, the fake's default).
    fn service(upstream: Arc<FakeUpstream>) -> RegistryService {
        RegistryService::new(Arc::new(MemoryStore::default()), upstream, CacheOptions::default())
    }

    fn manifests(index: &ReferrersIndex) -> Vec<Value> {
        let v: Value = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!((v["schemaVersion"].as_i64(), v["mediaType"].as_str()), (Some(2), Some(OCI_INDEX)), "{v}");
        v["manifests"].as_array().unwrap().clone()
    }

    #[tokio::test]
    async fn no_referrers_tag_is_an_empty_index_not_an_error() {
        let repo: RepositoryName = "org/app".parse().unwrap();
        let unknown = Digest::sha256_of(b"nothing refers to this");
        let svc = service(Arc::new(FakeUpstream::default()));
        let index = svc.referrers(&repo, &unknown, None).await.unwrap();
        assert!(manifests(&index).is_empty());
        assert!(!index.artifact_type_filtered);
        // filtered or not, an empty answer says which filter it applied
        let index = svc.referrers(&repo, &unknown, Some(SIG)).await.unwrap();
        assert!(manifests(&index).is_empty());
        assert!(index.artifact_type_filtered);
        // a repository the upstream does not know either
        let index = svc.referrers(&"org/nothing".parse().unwrap(), &unknown, None).await.unwrap();
        assert!(manifests(&index).is_empty());
    }

    #[tokio::test]
    async fn the_referrers_tag_lists_them_when_the_upstream_has_no_api() {
        let upstream = Arc::new(FakeUpstream::default());
        let subject = Digest::sha256_of(b"a child manifest");
        let listed = json!([
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::sha256_of(b"s").as_str(),
             "size": 1, "artifactType": SIG},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::sha256_of(b"b").as_str(),
             "size": 1, "artifactType": "application/spdx+json"},
        ]);
        let tag = subject.as_str().replacen(':', "-", 1);
        let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed}).to_string();
        upstream.tag("org/app", &tag, OCI_INDEX, body);
        let svc = service(upstream);
        let repo: RepositoryName = "org/app".parse().unwrap();
        assert_eq!(manifests(&svc.referrers(&repo, &subject, None).await.unwrap()), listed.as_array().unwrap().clone());
        let sigs = svc.referrers(&repo, &subject, Some(SIG)).await.unwrap();
        assert_eq!(manifests(&sigs), vec![listed[0].clone()]);
        assert!(sigs.artifact_type_filtered);
    }

    #[tokio::test]
    async fn a_referrers_tag_that_is_not_an_index_is_the_upstreams_fault() {
        let upstream = Arc::new(FakeUpstream::default());
        let subject = Digest::sha256_of(b"x");
        upstream.tag("org/app", &subject.as_str().replacen(':', "-", 1), OCI_INDEX, "{\"schemaVersion\":2}");
        let err = service(upstream).referrers(&"org/app".parse().unwrap(), &subject, None).await.unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::BadGateway, "{err:?}");
    }

    #[test]
    fn referrers_tags() {
        assert!(is_referrers_tag(&format!("sha256-{}", "a".repeat(64))));
        assert!(!is_referrers_tag(&format!("sha256-{}.sig", "a".repeat(64))));
        assert!(!is_referrers_tag("v1-2"));
        assert!(!is_referrers_tag("latest"));
    }

    #[test]
    fn artifact_type_filter_unless_applied_upstream() {
        let found = Referrers {
            manifests: vec![json!({"artifactType": "a/sig", "digest": "d1"}), json!({"artifactType": "a/sbom"})],
            artifact_type_filtered: false,
        };
        let out = referrers_index(found.clone(), Some("a/sig"));
        let v: Value = serde_json::from_slice(&out.bytes).unwrap();
        assert_eq!(v["manifests"], json!([{"artifactType": "a/sig", "digest": "d1"}]));
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert!(out.artifact_type_filtered);
        let all = referrers_index(found.clone(), None);
        assert_eq!(serde_json::from_slice::<Value>(&all.bytes).unwrap()["manifests"].as_array().unwrap().len(), 2);
        assert!(!all.artifact_type_filtered);
        let upstream_did = Referrers { artifact_type_filtered: true, ..found };
        let kept = referrers_index(upstream_did, Some("a/sig"));
        assert_eq!(serde_json::from_slice::<Value>(&kept.bytes).unwrap()["manifests"].as_array().unwrap().len(), 2);
    }
}
