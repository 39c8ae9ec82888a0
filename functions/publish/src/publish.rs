//! The I/O around [`crate::assemble`]: read every source (all of them, before anything is written), then make each
//! child's blobs and manifest present in the target repository and push the index.

use crate::assemble::{Assembled, Entry, Format, Platform, SourceSpec, assemble};
use crate::client::PushClient;
use bytes::Bytes;
use metahub_core::filter::{
    ACCEPT_ALL, ATTESTATION_SUBJECT, ATTESTATION_TYPE, DOCKER_MANIFEST, OCI_MANIFEST, is_index_media_type,
};
use metahub_core::nvidia::Requirements;
use metahub_core::ports::{Manifest, Upstream};
use metahub_core::reference::{Digest, ImageRef, Reference, RepositoryName};
use metahub_core::{Error, Result};
use serde_json::Value;
use std::collections::HashSet;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const CONFIG_LIMIT: usize = 8 * 1024 * 1024;

/// A child manifest to make present in the target: where it comes from, its bytes and the blobs it references.
#[derive(Debug, Clone)]
pub struct Child {
    pub entry: Entry,
    pub repository: RepositoryName,
    pub bytes: Bytes,
    pub blobs: Vec<Digest>,
}

/// Everything validated and assembled; nothing written yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: RepositoryName,
    pub tag: String,
    pub index: Assembled,
    pub children: Vec<Child>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    pub digest: Option<Digest>,
    /// Blobs already in the target repository.
    pub present: usize,
    /// Blobs mounted from another repository: `(digest, from)`.
    pub mounted: Vec<(Digest, RepositoryName)>,
    /// Child manifests PUT into the target repository (those already there are not).
    pub manifests_pushed: usize,
}

fn on_source(source: &str, e: Error) -> Error {
    Error { code: e.code, message: format!("source {source}: {}", e.message), detail: e.detail }
}

fn accept_all() -> Vec<String> {
    ACCEPT_ALL.iter().map(|s| (*s).to_owned()).collect()
}

fn json_of(m: &Manifest, what: &str) -> Result<Value> {
    serde_json::from_slice(&m.bytes).map_err(|_| Error::manifest_invalid(format!("{what} is not JSON")))
}

/// The config digest and media type, and every blob digest, of an image manifest.
fn blobs_of(manifest: &Value, what: &str) -> Result<(Digest, String, Vec<Digest>)> {
    let digest = |v: &Value| -> Result<Digest> {
        v.get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::manifest_invalid(format!("{what}: a descriptor has no digest")))?
            .parse()
    };
    let config = manifest.get("config").ok_or_else(|| Error::manifest_invalid(format!("{what} has no config")))?;
    let config_digest = digest(config)?;
    let config_type = config.get("mediaType").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut blobs = vec![config_digest.clone()];
    for layer in manifest.get("layers").and_then(Value::as_array).into_iter().flatten() {
        // Foreign layers (`urls`) live outside the registry: there is nothing to mount.
        if layer.get("urls").and_then(Value::as_array).is_some_and(|u| !u.is_empty()) {
            continue;
        }
        blobs.push(digest(layer)?);
    }
    Ok((config_digest, config_type, blobs))
}

fn is_attestation(entry: &Value) -> Option<String> {
    let a = entry.get("annotations")?;
    (a.get(ATTESTATION_TYPE).and_then(Value::as_str) == Some("attestation-manifest"))
        .then(|| a.get(ATTESTATION_SUBJECT).and_then(Value::as_str).unwrap_or_default().to_owned())
}

/// A single image manifest as a child: its blobs, and its platform from its config blob when `platform` is `None`.
async fn image_child(
    client: &PushClient,
    repository: &RepositoryName,
    manifest: Manifest,
    platform: Option<Platform>,
    features: Vec<String>,
    source: String,
) -> Result<Child> {
    if manifest.media_type != OCI_MANIFEST && manifest.media_type != DOCKER_MANIFEST {
        return Err(Error::manifest_invalid(format!(
            "is a manifest of type {}, which index create does not support (image manifests and indexes only)",
            manifest.media_type
        )));
    }
    let json = json_of(&manifest, "the manifest")?;
    let (config_digest, config_type, blobs) = blobs_of(&json, "the manifest")?;
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(Error::manifest_invalid(format!(
            "is an artifact (config type {config_type:?}), not a container image; index create takes images only"
        )));
    }
    // The config, always: its NVIDIA_REQUIRE_* tells builds of one platform apart (cu121, cu124) without a feature.
    let config = client.get_blob(repository, &config_digest, CONFIG_LIMIT).await?;
    let config_json: Value = serde_json::from_slice(&config)
        .map_err(|_| Error::manifest_invalid(format!("its config blob {config_digest} is not JSON")))?;
    let platform = match platform {
        Some(p) => p,
        None => Platform::from_json(&config_json)
            .ok_or_else(|| Error::manifest_invalid("its config names no architecture or os".to_owned()))?,
    };
    let requirements = Requirements::from_config(&config).unwrap_or_default();
    if platform.os == "unknown" || platform.architecture == "unknown" {
        return Err(Error::manifest_invalid(format!(
            "has platform {platform}: an attestation or other non-runnable manifest, not an image"
        )));
    }
    Ok(Child {
        entry: Entry {
            source,
            digest: manifest.digest.clone(),
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len() as u64,
            platform,
            features,
            requirements,
        },
        repository: repository.clone(),
        bytes: manifest.bytes,
        blobs,
    })
}

/// One source's children: itself for an image manifest; each platform entry (attestations skipped) of an index.
pub async fn resolve(reader: &dyn Upstream, client: &PushClient, spec: &SourceSpec) -> Result<Vec<Child>> {
    let label = spec.image.to_string();
    let repository = &spec.image.name;
    let wrap = |e| on_source(&label, e);
    let top = reader.get_manifest(repository, &spec.image.reference, &accept_all()).await.map_err(wrap)?;
    if !is_index_media_type(&top.media_type) {
        let child = image_child(client, repository, top, None, spec.features.clone(), label.clone()).await;
        return child.map(|c| vec![c]).map_err(wrap);
    }
    let index = json_of(&top, "the index").map_err(wrap)?;
    let entries = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut children = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if is_attestation(entry).is_some() {
            continue;
        }
        let digest: Digest = entry
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .parse()
            .map_err(|e: Error| wrap(Error::manifest_invalid(format!("entry {i}: {}", e.message))))?;
        let source = format!("{label} (entry {digest})");
        let wrap_child = |e: Error| on_source(&source, e);
        let manifest = reader
            .get_manifest(repository, &Reference::Digest(digest.clone()), &accept_all())
            .await
            .map_err(wrap_child)?;
        if is_index_media_type(&manifest.media_type) {
            return Err(wrap_child(Error::manifest_invalid("is a nested index, which index create does not expand")));
        }
        let platform = entry.get("platform").and_then(Platform::from_json);
        // Features given apply to every entry; with none given, an entry keeps the features it already carries.
        let features = if spec.features.is_empty() {
            entry
                .get("platform")
                .and_then(|p| p.get("features"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        } else {
            spec.features.clone()
        };
        let child = image_child(client, repository, manifest, platform, features, source.clone()).await;
        children.push(child.map_err(wrap_child)?);
    }
    if children.is_empty() {
        return Err(wrap(Error::manifest_invalid("is an index without any image entry")));
    }
    Ok(children)
}

/// Reads and validates every source, then assembles the index. Writes nothing.
pub async fn plan(
    reader: &dyn Upstream,
    client: &PushClient,
    target: &ImageRef,
    sources: &[SourceSpec],
    format: Format,
) -> Result<Plan> {
    let Reference::Tag(tag) = &target.reference else {
        return Err(Error::manifest_invalid(format!("target {target} must be a tag (org/image:tag), not a digest")));
    };
    let mut children = Vec::new();
    for spec in sources {
        children.extend(resolve(reader, client, spec).await?);
    }
    let entries: Vec<Entry> = children.iter().map(|c| c.entry.clone()).collect();
    let index = assemble(&entries, format)?;
    Ok(Plan { target: target.name.clone(), tag: tag.as_str().to_owned(), index, children })
}

/// Makes every child's blobs present in the target (already there: skipped; elsewhere on the registry: mounted,
/// never copied), PUTs each child manifest by digest, then the index at the tag.
pub async fn push(client: &PushClient, plan: &Plan) -> Result<PushReport> {
    let target = &plan.target;
    let mut report = PushReport::default();
    let mut blobs_done: HashSet<&Digest> = HashSet::new();
    let mut manifests_done: HashSet<&Digest> = HashSet::new();
    for child in &plan.children {
        if !manifests_done.insert(&child.entry.digest) {
            continue;
        }
        let wrap = |e| on_source(&child.entry.source, e);
        for blob in &child.blobs {
            if !blobs_done.insert(blob) {
                continue;
            }
            if client.blob_exists(target, blob).await.map_err(wrap)? {
                report.present += 1;
            } else if &child.repository != target
                && client.mount_blob(target, blob, &child.repository).await.map_err(wrap)?
            {
                report.mounted.push((blob.clone(), child.repository.clone()));
            } else {
                return Err(wrap(Error::new(
                    metahub_core::ErrorCode::BlobUnknown,
                    format!(
                        "blob {blob} is not in {target} and {} would not mount it from {}",
                        client.label(),
                        child.repository
                    ),
                )));
            }
        }
        let digest = &child.entry.digest;
        if !client.manifest_exists(target, digest, &child.entry.media_type).await.map_err(wrap)? {
            client.put_manifest(target, digest.as_str(), &child.entry.media_type, &child.bytes).await.map_err(wrap)?;
            report.manifests_pushed += 1;
        }
    }
    let digest = client.put_manifest(target, &plan.tag, plan.index.media_type, &plan.index.bytes).await?;
    report.digest = Some(digest);
    Ok(report)
}

/// One row of `index inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<Platform>,
    pub features: Vec<String>,
    /// For an attestation manifest: the digest of the entry it describes.
    pub attests: Option<String>,
}

/// What `index inspect` shows: the reference's own digest and type, and its entries (one for a single manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub reference: String,
    pub digest: Digest,
    pub media_type: String,
    pub is_index: bool,
    pub entries: Vec<InspectedEntry>,
}

pub async fn inspect(reader: &dyn Upstream, client: &PushClient, image: &ImageRef) -> Result<Inspection> {
    let top = reader.get_manifest(&image.name, &image.reference, &accept_all()).await?;
    let mut out = Inspection {
        reference: image.to_string(),
        digest: top.digest.clone(),
        media_type: top.media_type.clone(),
        is_index: is_index_media_type(&top.media_type),
        entries: Vec::new(),
    };
    let json = json_of(&top, &format!("manifest {image}"))?;
    if out.is_index {
        for (i, e) in json.get("manifests").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let digest: Digest = text("digest")
                .parse()
                .map_err(|err: Error| Error::manifest_invalid(format!("{image} entry {i}: {}", err.message)))?;
            let platform = e.get("platform");
            out.entries.push(InspectedEntry {
                digest,
                media_type: text("mediaType"),
                size: e.get("size").and_then(Value::as_u64).unwrap_or_default(),
                platform: platform.and_then(Platform::from_json),
                features: platform
                    .and_then(|p| p.get("features"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
                attests: is_attestation(e),
            });
        }
    } else {
        // A single manifest: its platform is in its config, when it is an image.
        let platform = match blobs_of(&json, &format!("manifest {image}")) {
            Ok((config, _, _)) => match client.get_blob(&image.name, &config, CONFIG_LIMIT).await {
                Ok(bytes) => serde_json::from_slice::<Value>(&bytes).ok().as_ref().and_then(Platform::from_json),
                Err(_) => None,
            },
            Err(_) => None,
        };
        out.entries.push(InspectedEntry {
            digest: top.digest.clone(),
            media_type: top.media_type.clone(),
            size: top.bytes.len() as u64,
            platform,
            features: Vec::new(),
            attests: None,
        });
    }
    Ok(out)
}
