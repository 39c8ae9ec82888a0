//! The pure part: parsing `--from REF[=F,F…]`, and building the index bytes from resolved entries. No I/O here, so
//! the rules (strict features, generic first, no duplicate platform + feature set, docker-typed children for a
//! manifest list) are unit tested without a registry.

use metahub_core::filter::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX};
use metahub_core::machine::{FeatureSet, level_variant};
use metahub_core::nvidia::Requirements;
use metahub_core::reference::{Digest, ImageRef};
use metahub_core::{Error, Result};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The wire format of the index pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// An OCI image index.
    #[default]
    Oci,
    /// A Docker manifest list (every child must be a Docker schema2 manifest).
    Docker,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        }
    }
}

/// One `--from` argument: a reference and the features its entries carry (validated strictly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub image: ImageRef,
    /// Canonical strings (`Feature`'s Display), in the given order; empty for a generic source.
    pub features: Vec<String>,
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.image)?;
        if !self.features.is_empty() {
            write!(f, "={}", self.features.join(","))?;
        }
        Ok(())
    }
}

impl FromStr for SourceSpec {
    type Err = Error;
    /// `REF` or `REF=F,F…`: features as the admin API validates machine types (unknown cpu names refused with the
    /// nearest names, malformed nvcap refused, duplicates refused, at most one cpu: and one nvcap:).
    fn from_str(s: &str) -> Result<Self> {
        let (reference, features) = match s.split_once('=') {
            Some((r, f)) => (r, f),
            None => (s, ""),
        };
        let image: ImageRef =
            reference.parse().map_err(|e: Error| Error::new(e.code, format!("source {reference:?}: {}", e.message)))?;
        let features = FeatureSet::parse(features.split(',').filter(|f| !f.is_empty()))
            .map_err(|e| Error::new(e.code, format!("source {image}: {}", e.message)))?;
        Ok(SourceSpec { image, features: features.texts() })
    }
}

/// An entry's platform, as the OCI image index spec names its fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    pub os_version: Option<String>,
    pub os_features: Vec<String>,
    pub variant: Option<String>,
}

impl Platform {
    /// From a `platform` object of an index entry or an image config (`architecture`, `os`, `os.version`,
    /// `os.features`, `variant`); `None` when architecture or os is missing.
    pub fn from_json(value: &Value) -> Option<Platform> {
        let text = |k: &str| value.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        Some(Platform {
            architecture: text("architecture")?,
            os: text("os")?,
            os_version: text("os.version"),
            os_features: value
                .get("os.features")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            variant: text("variant"),
        })
    }

    fn key(&self) -> (&str, &str, Option<&str>, Option<&str>) {
        (&self.os, &self.architecture, self.variant.as_deref(), self.os_version.as_deref())
    }

    /// The platform object with `features`, fields in the spec's order.
    pub fn to_json(&self, features: &[String]) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.os_version {
            m.insert("os.version".into(), json!(v));
        }
        if !self.os_features.is_empty() {
            m.insert("os.features".into(), json!(self.os_features));
        }
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        if !features.is_empty() {
            m.insert("features".into(), json!(features));
        }
        Value::Object(m)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        if let Some(v) = &self.os_version {
            write!(f, " ({v})")?;
        }
        Ok(())
    }
}

/// One entry of the index to build, resolved from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// How errors name the entry: the `--from` reference, plus the child digest for an expanded index.
    pub source: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Platform,
    pub features: Vec<String>,
    /// The `NVIDIA_REQUIRE_*` of its config, which MetaHub reads when serving: builds of one platform that differ
    /// only in it (cu121, cu124) need no feature to be told apart.
    pub requirements: Requirements,
}

impl Entry {
    /// An amd64 or arm64 entry with a `cpu:` feature also states the cpu's level as `platform.variant` (`cpu:haswell`
    /// → `amd64/v3`): a client pulling the index straight from the upstream can then pick by level too (buildx's
    /// spelling), and MetaHub reads both. The baseline (`cpu:core2`) leaves the platform as the image has it.
    fn with_level_variant(&self) -> Entry {
        let cpu = self.features.iter().find_map(|f| f.strip_prefix("cpu:"));
        let mut entry = self.clone();
        if let Some(variant) = cpu.and_then(|cpu| level_variant(cpu, &self.platform.architecture)) {
            entry.platform.variant = Some(variant.to_owned());
        }
        entry
    }
}

/// The index to push: its exact bytes, digest and media type, and the entries in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub entries: Vec<Entry>,
}

/// Builds the index: generic entries first, then the others in the given order. Refuses an empty list, two generic
/// entries for one platform, two entries with the same platform and feature set, and (for `Format::Docker`) a child
/// that is not a Docker schema2 manifest. The same input always gives the same bytes.
pub fn assemble(entries: &[Entry], format: Format) -> Result<Assembled> {
    if entries.is_empty() {
        return Err(Error::manifest_invalid("no entries: give at least one --from"));
    }
    if format == Format::Docker
        && let Some(e) = entries.iter().find(|e| e.media_type != DOCKER_MANIFEST)
    {
        return Err(Error::manifest_invalid(format!(
            "source {} is {}, not a Docker schema2 manifest; a Docker manifest list (--format docker) needs Docker \
             manifests only, use --format oci",
            e.source, e.media_type
        )));
    }
    let entries: Vec<Entry> = entries.iter().map(Entry::with_level_variant).collect();
    let mut seen: Vec<(&Entry, BTreeSet<&str>)> = Vec::new();
    for e in &entries {
        let set: BTreeSet<&str> = e.features.iter().map(String::as_str).collect();
        let same = |o: &Entry, s: &BTreeSet<&str>| {
            o.platform.key() == e.platform.key() && *s == set && o.requirements == e.requirements
        };
        if let Some((first, _)) = seen.iter().find(|(o, s)| same(o, s)) {
            let what = match (set.is_empty(), e.requirements.is_empty()) {
                (true, true) => "are both generic (no features, no NVIDIA_REQUIRE_*)".to_owned(),
                (true, false) => format!("have the same NVIDIA requirement (cuda>={})", e.requirements.cuda()),
                (false, _) => format!("both carry features [{}]", e.features.join(",")),
            };
            return Err(Error::manifest_invalid(format!(
                "sources {} and {} {what} for platform {}: a machine could not tell them apart",
                first.source, e.source, e.platform
            )));
        }
        seen.push((e, set));
    }
    // Generic first (what a client pulling from the upstream takes), then the builds with NVIDIA requirements only,
    // oldest CUDA first (the most drivers run it), then the rest in the given order.
    let generic = |e: &&Entry| e.features.is_empty() && e.requirements.is_empty();
    let mut ordered: Vec<Entry> = entries.iter().filter(generic).cloned().collect();
    let mut cuda_only: Vec<Entry> =
        entries.iter().filter(|e| e.features.is_empty() && !e.requirements.is_empty()).cloned().collect();
    cuda_only.sort_by_key(|e| e.requirements.cuda());
    ordered.extend(cuda_only);
    ordered.extend(entries.iter().filter(|e| !e.features.is_empty()).cloned());
    let manifests: Vec<Value> = ordered
        .iter()
        .map(|e| {
            json!({
                "mediaType": e.media_type,
                "digest": e.digest.as_str(),
                "size": e.size,
                "platform": e.platform.to_json(&e.features),
            })
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": format.media_type(), "manifests": manifests});
    let bytes =
        serde_json::to_vec_pretty(&index).map_err(|e| Error::internal(format!("cannot encode the index: {e}")))?;
    Ok(Assembled { media_type: format.media_type(), digest: Digest::sha256_of(&bytes), bytes, entries: ordered })
}

#[cfg(test)]
mod tests {
    use super::*;
    use metahub_core::filter::OCI_MANIFEST;

    fn entry(source: &str, arch: &str, features: &[&str]) -> Entry {
        Entry {
            requirements: Requirements::default(),
            source: source.into(),
            digest: Digest::sha256_of(source.as_bytes()),
            media_type: OCI_MANIFEST.into(),
            size: 100,
            platform: Platform { architecture: arch.into(), os: "linux".into(), ..Platform::default() },
            features: features.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn sources_parse_with_strict_features() {
        let s: SourceSpec = "org/bench:cpu-skylake=cpu:skylake,nvcap:07.0".parse().unwrap();
        assert_eq!(s.image.to_string(), "org/bench:cpu-skylake");
        assert_eq!(s.features, ["cpu:skylake", "nvcap:7.0"]);
        assert_eq!(s.to_string(), "org/bench:cpu-skylake=cpu:skylake,nvcap:7.0");
        assert!("org/bench:generic".parse::<SourceSpec>().unwrap().features.is_empty());
        assert!("org/bench:generic=".parse::<SourceSpec>().unwrap().features.is_empty());
        let digest = format!("org/bench@sha256:{}=fabric:efa", "a".repeat(64));
        assert_eq!(digest.parse::<SourceSpec>().unwrap().features, ["fabric:efa"]);

        let e = "org/b:x=cpu:skylak".parse::<SourceSpec>().unwrap_err();
        assert!(
            e.message.contains("org/b:x") && e.message.contains("did you mean") && e.message.contains("skylake"),
            "{e}"
        );
        let e = "org/b:x=nvcap:8".parse::<SourceSpec>().unwrap_err();
        assert!(e.message.contains("nvcap is <major>.<minor>"), "{e}");
        let e = "org/b:x=cpu:haswell,cpu:haswell".parse::<SourceSpec>().unwrap_err();
        assert!(e.message.contains("listed twice"), "{e}");
        assert!("org/b:x=cpu:haswell,cpu:zen2".parse::<SourceSpec>().is_err());
        assert!("Org/B:x".parse::<SourceSpec>().is_err());
        assert!("org/b:x=plain".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn generic_first_then_given_order() {
        let a = assemble(
            &[
                entry("bw", "amd64", &["cpu:broadwell"]),
                entry("sky", "amd64", &["cpu:skylake"]),
                entry("gen", "amd64", &[]),
                entry("arm", "arm64", &[]),
            ],
            Format::Oci,
        )
        .unwrap();
        let order: Vec<&str> = a.entries.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(order, ["gen", "arm", "bw", "sky"]);
        assert_eq!(a.media_type, OCI_INDEX);
        assert_eq!(a.digest, Digest::sha256_of(&a.bytes));
        let v: Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_INDEX);
        assert_eq!(v["manifests"][0]["platform"], json!({"architecture": "amd64", "os": "linux"}));
        // the cpu's x86-64 level is written as the variant, as buildx spells level builds
        assert_eq!(
            v["manifests"][2]["platform"],
            json!({"architecture": "amd64", "os": "linux", "variant": "v3", "features": ["cpu:broadwell"]})
        );
        assert_eq!(v["manifests"][2]["digest"], Digest::sha256_of(b"bw").as_str());
        assert_eq!(v["manifests"][2]["size"], 100);
    }

    #[test]
    fn deterministic_and_platform_fields_in_spec_order() {
        let mut e = entry("win", "amd64", &["cpu:skylake"]);
        e.platform = Platform {
            architecture: "arm64".into(),
            os: "windows".into(),
            os_version: Some("10.0.17763.1".into()),
            os_features: vec!["win32k".into()],
            variant: Some("v8".into()),
        };
        let a = assemble(std::slice::from_ref(&e), Format::Oci).unwrap();
        assert_eq!(a, assemble(&[e], Format::Oci).unwrap());
        let text = String::from_utf8(a.bytes).unwrap();
        let pos = |k: &str| text.find(k).unwrap();
        assert!(pos("\"architecture\"") < pos("\"os\"") && pos("\"os\"") < pos("\"os.version\""));
        assert!(pos("\"os.features\"") < pos("\"variant\"") && pos("\"variant\"") < pos("\"features\""));
    }

    #[test]
    fn cpu_levels_become_variants() {
        let a = assemble(
            &[
                entry("core2", "amd64", &["cpu:core2"]),
                entry("nehalem", "amd64", &["cpu:nehalem"]),
                entry("icelake", "amd64", &["cpu:icelake", "nvcap:8.0"]),
                entry("graviton3", "arm64", &["cpu:neoverse_v1"]),
            ],
            Format::Oci,
        )
        .unwrap();
        let variants: Vec<Option<&str>> = a.entries.iter().map(|e| e.platform.variant.as_deref()).collect();
        assert_eq!(variants, [None, Some("v2"), Some("v4"), Some("v8.4")]);
    }

    #[test]
    fn cuda_builds_need_no_feature() {
        let cuda = |source: &str, require: &str| Entry {
            requirements: Requirements::from_env([format!("NVIDIA_REQUIRE_CUDA={require}").as_str()]),
            ..entry(source, "amd64", &[])
        };
        let a = assemble(
            &[cuda("cu124", "cuda>=12.4"), entry("cpu", "amd64", &[]), cuda("cu121", "cuda>=12.1")],
            Format::Oci,
        )
        .unwrap();
        let order: Vec<&str> = a.entries.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(order, ["cpu", "cu121", "cu124"], "generic, then oldest CUDA first");
        let text = String::from_utf8(a.bytes).unwrap();
        assert!(!text.contains("features"), "no feature written: MetaHub reads the configs\n{text}");
        let e = assemble(&[cuda("a", "cuda>=12.4"), cuda("b", "cuda>=12.4")], Format::Oci).unwrap_err();
        assert!(e.message.contains("same NVIDIA requirement (cuda>=12.4)"), "{e}");
    }

    #[test]
    fn duplicates_refused() {
        let e = assemble(&[entry("g1", "amd64", &[]), entry("g2", "amd64", &[])], Format::Oci).unwrap_err();
        assert!(e.message.contains("g1") && e.message.contains("g2") && e.message.contains("generic"), "{e}");
        let e = assemble(
            &[entry("a", "amd64", &["cpu:skylake", "nvcap:7.0"]), entry("b", "amd64", &["nvcap:7.0", "cpu:skylake"])],
            Format::Oci,
        )
        .unwrap_err();
        assert!(e.message.contains("sources a and b"), "{e}");
        // the same features on different platforms, and generic entries of different platforms, are fine
        assemble(&[entry("a", "amd64", &["fabric:efa"]), entry("b", "arm64", &["fabric:efa"])], Format::Oci).unwrap();
        assemble(&[entry("a", "amd64", &[]), entry("b", "arm64", &[])], Format::Oci).unwrap();
        assert!(assemble(&[], Format::Oci).is_err());
    }

    #[test]
    fn docker_format_needs_docker_children() {
        let e = assemble(&[entry("oci-one", "amd64", &[])], Format::Docker).unwrap_err();
        assert!(e.message.contains("oci-one") && e.message.contains("--format"), "{e}");
        let mut d = entry("d", "amd64", &[]);
        d.media_type = DOCKER_MANIFEST.into();
        let a = assemble(&[d], Format::Docker).unwrap();
        assert_eq!(a.media_type, DOCKER_LIST);
        let v: Value = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(v["mediaType"], DOCKER_LIST);
        assert_eq!(v["manifests"][0]["mediaType"], DOCKER_MANIFEST);
    }
}
