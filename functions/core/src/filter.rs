//! Index filtering: which entries of an upstream image index a machine type is served.
//!
//! A pure function of (index bytes, machine type): the output keeps every field of the input it does not drop, in
//! the input's order, so the same inputs always give the same bytes and digest.
//!
//! The index is read as raw JSON values (validated, not built into a tree) and only the entries' few fields the
//! matcher needs are decoded; the output writes the kept fields and entries back as the upstream spelled them.

use crate::error::{Error, Result};
use crate::machine::{Feature, Level, MachineType, MatchMode, cpu_level};
use crate::ports::Manifest;
use crate::reference::Digest;
use archspec::cpu::Microarchitecture;
use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What MetaHub asks the upstream for, whatever the client sent: with every type listed, a Docker manifest list is
/// never downgraded to its amd64 child for a client that only named single manifests.
pub const ACCEPT_ALL: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_V1_SIGNED];

/// BuildKit's annotations on an attestation entry of an index: its type, and the digest of the entry it attests.
pub const ATTESTATION_TYPE: &str = "vnd.docker.reference.type";
pub const ATTESTATION_SUBJECT: &str = "vnd.docker.reference.digest";

pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// One entry of an index, as the matcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub digest: String,
    pub os: String,
    pub architecture: String,
    pub variant: String,
    pub features: Vec<String>,
    /// The CPU level `variant` implies on `architecture`: a requirement, like a `cpu:` feature.
    pub level: Level,
    /// For an attestation manifest: the digest of the entry it describes.
    pub attests: Option<String>,
}

/// The fields of an index entry the matcher reads; everything else stays in the raw entry.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireEntry<'a> {
    #[serde(borrow)]
    digest: Cow<'a, str>,
    #[serde(borrow)]
    platform: Option<WirePlatform<'a>>,
    #[serde(borrow)]
    annotations: Option<HashMap<Cow<'a, str>, Cow<'a, str>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WirePlatform<'a> {
    #[serde(borrow)]
    os: Cow<'a, str>,
    #[serde(borrow)]
    architecture: Cow<'a, str>,
    #[serde(borrow)]
    variant: Cow<'a, str>,
    #[serde(borrow)]
    features: Option<Vec<Cow<'a, str>>>,
}

impl Entry {
    fn from_raw(raw: &RawValue, position: usize) -> Result<Entry> {
        let wire: WireEntry<'_> = serde_json::from_str(raw.get())
            .map_err(|e| Error::bad_gateway(format!("upstream index entry {position} is malformed: {e}")))?;
        if wire.digest.is_empty() {
            return Err(Error::bad_gateway(format!("upstream index entry {position} has no digest")));
        }
        let platform = wire.platform.unwrap_or_default();
        let attests = wire.annotations.as_ref().and_then(|a| {
            (a.get(ATTESTATION_TYPE).map(|t| t.as_ref()) == Some("attestation-manifest"))
                .then(|| a.get(ATTESTATION_SUBJECT).map(|d| d.to_string()).unwrap_or_default())
        });
        Ok(Entry {
            level: Level::of(&platform.architecture, &platform.variant),
            digest: wire.digest.into_owned(),
            os: platform.os.into_owned(),
            architecture: platform.architecture.into_owned(),
            variant: platform.variant.into_owned(),
            features: platform.features.unwrap_or_default().into_iter().map(Cow::into_owned).collect(),
            attests,
        })
    }

    pub fn platform(&self) -> String {
        match self.variant.as_str() {
            "" => format!("{}/{}", self.os, self.architecture),
            v => format!("{}/{}/{v}", self.os, self.architecture),
        }
    }

    /// The platform group: (os, architecture), and the variant only where it is not a level (32-bit arm …).
    fn group(&self) -> (&str, &str, &str) {
        match self.level {
            Level::NotALevel => (&self.os, &self.architecture, &self.variant),
            _ => (&self.os, normalized_architecture(&self.architecture), ""),
        }
    }

    /// The requirements as `explain` shows them: the level a variant implies, then the features.
    pub fn requirements(&self) -> Vec<String> {
        let level = match self.level {
            Level::Archspec(name) => Some(format!("{} = {name}", self.variant)),
            Level::Unknown => Some(format!("{} (no archspec level)", self.variant)),
            Level::Baseline | Level::NotALevel => None,
        };
        level.into_iter().chain(self.features.iter().cloned()).collect()
    }
}

/// Why an entry is or is not served.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub entry: Entry,
    pub fits: bool,
    pub served: bool,
    pub reason: String,
}

impl Verdict {
    /// The verdict as `metahub explain --json` and the admin API's explain route answer it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "digest": self.entry.digest,
            "platform": self.entry.platform(),
            "os": self.entry.os,
            "architecture": self.entry.architecture,
            "variant": self.entry.variant,
            "features": self.entry.features,
            "level": self.entry.level.archspec_name(),
            "attests": self.entry.attests,
            "fits": self.fits,
            "served": self.served,
            "reason": self.reason,
        })
    }
}

/// A parsed index: its fields as the upstream wrote them, the raw entries, and what the matcher reads of them.
pub struct Index<'a> {
    object: IndexMap<String, &'a RawValue>,
    raw_entries: Vec<&'a RawValue>,
    pub entries: Vec<Entry>,
}

impl<'a> Index<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Index<'a>> {
        let object: IndexMap<String, &RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| Error::bad_gateway(format!("upstream index is not a JSON object: {e}")))?;
        let raw_entries: Vec<&RawValue> = object
            .get("manifests")
            .and_then(|m| serde_json::from_str(m.get()).ok())
            .ok_or_else(|| Error::bad_gateway("upstream index has no manifests list"))?;
        let entries = raw_entries.iter().enumerate().map(|(i, raw)| Entry::from_raw(raw, i)).collect::<Result<_>>()?;
        Ok(Index { object, raw_entries, entries })
    }
}

/// `amd64` and `x86_64` are one platform to every client (they normalize), so they are one group here too.
fn normalized_architecture(architecture: &str) -> &str {
    match architecture {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// Specificity of a fitting entry: depth of its cpu or level in the µarch DAG, nvcap, number of features. Greater
/// is more specific.
type Rank = (usize, (u32, u32), usize);

fn depth(archspec_name: &str) -> usize {
    Microarchitecture::known_targets().get(archspec_name).map_or(0, |m| m.ancestors().len() + 1)
}

/// The machine type as the matcher reads it, computed once per filtering.
struct Host<'m> {
    mode: MatchMode,
    features: Vec<Feature>,
    /// The cpu's name and every archspec node it runs (itself and its ancestors).
    cpu: Option<(&'m str, HashSet<&'static str>)>,
    nvcap: Option<(u32, u32)>,
}

impl<'m> Host<'m> {
    fn of(machine: &'m MachineType) -> Host<'m> {
        let features = machine.parsed_features();
        let cpu = machine.features.iter().find_map(|f| f.strip_prefix("cpu:")).map(|name| {
            let mut runs: HashSet<&'static str> = HashSet::new();
            if let Some(uarch) = Microarchitecture::known_targets().get(name) {
                runs.insert(uarch.name());
                runs.extend(uarch.ancestors().iter().map(|a| a.name()));
            }
            (name, runs)
        });
        let nvcap = features.iter().find_map(|f| match f {
            Feature::NvCap { major, minor } => Some((*major, *minor)),
            _ => None,
        });
        Host { mode: machine.match_mode, features, cpu, nvcap }
    }

    /// Whether the machine's cpu is `archspec_name` or descends from it.
    fn runs(&self, archspec_name: &str) -> bool {
        self.cpu.as_ref().is_some_and(|(name, runs)| *name == archspec_name || runs.contains(archspec_name))
    }

    fn cpu_name(&self) -> &str {
        self.cpu.as_ref().map_or("", |(name, _)| name)
    }

    /// Why the machine cannot run an entry's level: "v4 needs x86_64_v4; haswell is x86_64_v3".
    fn level_miss(&self, entry: &Entry, level: &str) -> String {
        let what = format!("{} needs {level}", entry.variant);
        match &self.cpu {
            None => format!("{what}; the machine names no cpu"),
            Some((name, _)) => match cpu_level(name, &entry.architecture) {
                Some(own) => format!("{what}; {name} is {own}"),
                None => format!("{what}; {name} is no {} cpu", entry.architecture),
            },
        }
    }

    /// How well an entry fits: its rank and why, or why it does not fit.
    fn fit(&self, entry: &Entry) -> Result<(Rank, String), String> {
        let mut why = Vec::new();
        let mut cpu_depth = 0;
        match entry.level {
            Level::Baseline | Level::NotALevel => {}
            Level::Unknown => {
                return Err(format!(
                    "variant {} is no {} level archspec knows; no machine is known to run it",
                    entry.variant, entry.architecture
                ));
            }
            Level::Archspec(level) => {
                if !self.runs(level) {
                    return Err(self.level_miss(entry, level));
                }
                why.push(format!("{} needs {level}; {} runs it", entry.variant, self.cpu_name()));
                cpu_depth = depth(level);
            }
        }
        let features: Vec<Feature> = entry.features.iter().map(|f| Feature::parse_lenient(f)).collect();
        if self.mode == MatchMode::Exact && !features.is_empty() {
            let same = features.len() == self.features.len() && features.iter().all(|f| self.features.contains(f));
            if !same {
                return Err("exact mode: features differ from the machine's".into());
            }
        }
        let mut nvcap = (0, 0);
        for feature in &features {
            match feature {
                Feature::Cpu(wanted) => {
                    if !self.runs(wanted) {
                        return Err(match &self.cpu {
                            None => format!("needs cpu:{wanted}; the machine names no cpu"),
                            Some((name, _)) => format!("needs cpu:{wanted}; cpu:{name} does not descend from it"),
                        });
                    }
                    cpu_depth = cpu_depth.max(depth(wanted));
                }
                Feature::NvCap { major, minor } => match self.nvcap {
                    Some((hmaj, hmin)) if hmaj == *major && hmin >= *minor => nvcap = (*major, *minor),
                    Some((hmaj, hmin)) => {
                        return Err(format!("needs nvcap:{major}.{minor}; the machine has nvcap:{hmaj}.{hmin}"));
                    }
                    None => return Err(format!("needs nvcap:{major}.{minor}; the machine names no GPU")),
                },
                Feature::Other(s) => {
                    if !self.features.contains(feature) {
                        return Err(format!("needs {s}; the machine lacks it"));
                    }
                }
            }
        }
        if !features.is_empty() {
            why.push("every feature is satisfied".into());
        }
        let why = if why.is_empty() { "generic: fits every machine".to_owned() } else { why.join("; ") };
        Ok(((cpu_depth, nvcap, features.len()), why))
    }
}

/// Every entry with its verdict, in index order. One pass: each entry is matched once and competes for its group's
/// place in a map, so the cost is linear in the number of entries.
pub fn explain(index: &Index, machine: &MachineType) -> Vec<Verdict> {
    let host = Host::of(machine);
    let mut verdicts = Vec::with_capacity(index.entries.len());
    // Per platform group, the fitting entry with the highest rank; ties go to index order.
    let mut best: HashMap<(&str, &str, &str), (Rank, usize)> = HashMap::new();
    for (i, entry) in index.entries.iter().enumerate() {
        let (fits, reason) = match host.fit(entry) {
            Ok((rank, why)) => {
                if entry.attests.is_none() {
                    best.entry(entry.group())
                        .and_modify(|b| {
                            if rank > b.0 {
                                *b = (rank, i)
                            }
                        })
                        .or_insert((rank, i));
                }
                (true, why)
            }
            Err(why) => (false, why),
        };
        verdicts.push(Verdict { entry: entry.clone(), fits, served: false, reason });
    }
    let mut served_digests = HashSet::new();
    for (_, i) in best.into_values() {
        verdicts[i].served = true;
        served_digests.insert(index.entries[i].digest.as_str());
    }
    for v in &mut verdicts {
        if let Some(subject) = &v.entry.attests {
            v.fits = served_digests.contains(subject.as_str());
            v.served = v.fits;
            v.reason =
                if v.fits { "attestation of a served entry" } else { "attestation of an entry not served" }.into();
        } else if v.fits && !v.served {
            v.reason = format!("{}; but a more specific entry of the same platform is served", v.reason);
        }
    }
    verdicts
}

/// Filters `upstream` (an OCI index or Docker manifest list, as the upstream serves it) for `machine`. When filtering
/// keeps every entry unchanged, the answer is `upstream` itself: the upstream's bytes under the upstream's digest
/// (signatures and pins of the index stay valid); else the filtered bytes under their own digest.
pub fn filter_index(upstream: &Manifest, machine: &MachineType) -> Result<Manifest> {
    let (bytes, media_type) = (&upstream.bytes[..], upstream.media_type.as_str());
    let index = Index::parse(bytes)?;
    let verdicts = explain(&index, machine);
    if !verdicts.iter().any(|v| v.served && v.entry.attests.is_none()) {
        return Err(nothing_fits(machine, &index));
    }
    let serialize = |e: serde_json::Error| Error::internal(format!("serializing index: {e}"));
    let mut kept: Vec<Cow<'_, RawValue>> = Vec::with_capacity(verdicts.len());
    for (raw, verdict) in index.raw_entries.iter().zip(&verdicts) {
        if verdict.served {
            kept.push(served_form(raw, &verdict.entry)?);
        }
    }
    let media_type = index
        .object
        .get("mediaType")
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
        .unwrap_or_else(|| media_type.to_owned());
    if kept.len() == verdicts.len() && kept.iter().all(|k| matches!(k, Cow::Borrowed(_))) {
        return Ok(Manifest { digest: upstream.digest.clone(), bytes: upstream.bytes.clone(), media_type });
    }
    let kept = RawValue::from_string(serde_json::to_string(&kept).map_err(serialize)?).map_err(serialize)?;
    let mut object = index.object;
    object.insert("manifests".to_owned(), &kept);
    let bytes = serde_json::to_vec(&object).map_err(serialize)?;
    Ok(Manifest { digest: Digest::sha256_of(&bytes), bytes: Bytes::from(bytes), media_type })
}

/// How a served entry is written: as the upstream wrote it, except on the architectures whose variant is a level
/// (amd64, arm64), where the chosen entry stands under its group's plain platform (`linux/amd64`, `linux/arm64`):
/// the variant is dropped (all but arm64 `v8`) and the architecture is spelled as Go does (`x86_64` → `amd64`). The
/// level was MetaHub's to read; left to the clients, such entries are refused — read from their matchers:
///
/// - containerd (`ctr`; Docker Engine ≥ 23 matches with the same containerd/platforms package): `platforms.Only(host)`
///   accepts, for a host of variant vN, amd64 vN…v1, and normalizes `amd64/v1` to `amd64` and `arm64/v8` to `arm64`.
///   The host's default platform has no amd64 variant (`cpuVariant()` detects one on arm only), so an index whose
///   amd64 entry is `amd64/v3` fails with "no match for platform in manifest". containerd 1.6 does not normalize
///   `arm64/v8.0`.
/// - containers/image (skopeo, podman, CRI-O; `internal/pkg/platform`): `WantedPlatforms` wants variant "" on amd64
///   ("" then `v8` on arm64) and `MatchesPlatform` compares variants (and architectures) for equality: `amd64/v1`,
///   `amd64/v3` and `x86_64` entries are never chosen on an amd64 host.
///
/// So the plain platform is the one form every client resolves to the chosen build with its default platform. Only
/// the served copy changes, so the output stays a pure function of the upstream bytes and the machine type; the
/// e2e test `test_levels.py` pulls it with every client.
fn served_form<'a>(raw: &'a RawValue, entry: &Entry) -> Result<Cow<'a, RawValue>> {
    let architecture = normalized_architecture(&entry.architecture);
    let plain_variant = entry.variant.is_empty() || (architecture == "arm64" && entry.variant == "v8");
    let plain = plain_variant && architecture == entry.architecture;
    if plain || entry.level == Level::NotALevel || entry.attests.is_some() {
        return Ok(Cow::Borrowed(raw));
    }
    let malformed = |e: serde_json::Error| Error::bad_gateway(format!("upstream index entry is malformed: {e}"));
    let mut object: IndexMap<String, &RawValue> = serde_json::from_str(raw.get()).map_err(malformed)?;
    let Some(platform) = object.get("platform") else { return Ok(Cow::Borrowed(raw)) };
    let mut platform: IndexMap<String, &RawValue> = serde_json::from_str(platform.get()).map_err(malformed)?;
    if !plain_variant {
        platform.shift_remove("variant");
    }
    let spelled = serde_json::value::to_raw_value(architecture).map_err(|e| Error::internal(e.to_string()))?;
    if architecture != entry.architecture {
        platform.insert("architecture".to_owned(), &spelled);
    }
    let serialize = |e: serde_json::Error| Error::internal(format!("serializing index entry: {e}"));
    let platform = RawValue::from_string(serde_json::to_string(&platform).map_err(serialize)?).map_err(serialize)?;
    object.insert("platform".to_owned(), &platform);
    let entry = RawValue::from_string(serde_json::to_string(&object).map_err(serialize)?).map_err(serialize)?;
    Ok(Cow::Owned(entry))
}

fn nothing_fits(machine: &MachineType, index: &Index) -> Error {
    let mut offered: Vec<String> = index
        .entries
        .iter()
        .filter(|e| e.attests.is_none())
        .map(|e| format!("{} [{}]", e.platform(), e.features.join(", ")))
        .collect();
    offered.dedup();
    Error::manifest_unknown(format!(
        "no image of this index fits machine type {:?} [{}]; on offer: {}",
        machine.name,
        machine.features.join(", "),
        offered.join("; ")
    ))
    .with_detail(serde_json::json!({"machineType": machine.name, "offered": offered}))
}

#[cfg(test)]
mod tests;
