//! Index filtering: which entries of an upstream image index a machine type is served.
//!
//! A pure function of (index bytes, machine type): the output keeps every field of the input it does not drop, in
//! the input's order, so the same inputs always give the same bytes and digest.
//!
//! The index is read as raw JSON values (validated, not built into a tree); each entry is read once, keeping its
//! text and decoding only the few fields the matcher needs, borrowed from the bytes. The output writes the kept
//! fields and entries back as the upstream spelled them. Serving builds nothing per entry beyond that (no copies, no
//! reasons): a 4 MiB index is filtered in milliseconds. `explain` adds an owned copy and a reason per entry.

use crate::error::{Error, Result};
use crate::machine::{Feature, FeatureRef, Level, MachineType, MatchMode, cpu_level};
use crate::nvidia::{Check, CudaVersion, GpuFacts, GpuRequirements, Requirements};
use crate::ports::Manifest;
use crate::reference::Digest;
use archspec::cpu::Microarchitecture;
use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

mod runnable;
mod wire;
pub use runnable::{Listed, Platform, cannot_run, children, client_choices};
pub use wire::Index;
use wire::{Parsed, View, normalized_architecture, platform_text};

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

impl Entry {
    pub fn platform(&self) -> String {
        platform_text(&self.os, &self.architecture, &self.variant)
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

/// Specificity of a fitting entry: depth of its cpu or level in the µarch DAG, nvcap, number of features; then its
/// newest CUDA requirement (a newer build the driver runs wins). Greater is better.
type Rank = (usize, (u32, u32), usize, CudaVersion);

fn depth(archspec_name: &str) -> usize {
    Microarchitecture::known_targets().get(archspec_name).map_or(0, |m| m.ancestors().len() + 1)
}

/// The machine type as the matcher reads it, computed once per filtering.
struct Host<'m> {
    mode: MatchMode,
    features: &'m [Feature],
    /// The cpu's name and every archspec node it runs (itself and its ancestors).
    cpu: Option<(&'m str, HashSet<&'static str>)>,
    nvcap: Option<(u32, u32)>,
    /// The driver: `cuda:`, `driver:`, `gpu-brand:`, `nvcap:`.
    gpu: GpuFacts,
    /// The NVIDIA requirements of the children, by digest, as read from their configs; a child not in it has none.
    requirements: &'m GpuRequirements,
}

/// No child with a known NVIDIA requirement.
static NO_REQUIREMENTS: std::sync::LazyLock<GpuRequirements> = std::sync::LazyLock::new(GpuRequirements::new);

impl<'m> Host<'m> {
    /// The machine alone: no child has a known NVIDIA requirement.
    fn of(machine: &'m MachineType) -> Host<'m> {
        Host::with(machine, &NO_REQUIREMENTS)
    }

    fn with(machine: &'m MachineType, requirements: &'m GpuRequirements) -> Host<'m> {
        let features = machine.features.as_slice();
        let cpu = machine.features.cpu().map(|name| {
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
        Host {
            mode: machine.match_mode,
            features,
            cpu,
            nvcap,
            gpu: GpuFacts::of(&machine.features.texts()),
            requirements,
        }
    }

    /// Whether the machine's cpu is `archspec_name` or descends from it.
    fn runs(&self, archspec_name: &str) -> bool {
        self.cpu.as_ref().is_some_and(|(name, runs)| *name == archspec_name || runs.contains(archspec_name))
    }

    fn cpu_name(&self) -> &str {
        self.cpu.as_ref().map_or("", |(name, _)| name)
    }

    /// How well an entry fits: its rank, or what it misses. The reasons are written only by `explain`.
    fn fit<'e>(&self, entry: &'e View<'_>) -> Result<Rank, Miss<'e>> {
        let mut cpu_depth = 0;
        match entry.level {
            Level::Baseline | Level::NotALevel => {}
            Level::Unknown => return Err(Miss::UnknownLevel),
            Level::Archspec(level) => {
                if !self.runs(level) {
                    return Err(Miss::Level(level));
                }
                cpu_depth = depth(level);
            }
        }
        let features = || entry.features.iter().map(|f| (&**f, FeatureRef::lenient(f)));
        if self.mode == MatchMode::Exact && !entry.features.is_empty() {
            let same = entry.features.len() == self.features.len()
                && features().all(|(_, f)| self.features.iter().any(|own| f == *own));
            if !same {
                return Err(Miss::ExactFeatures);
            }
        }
        let mut nvcap = (0, 0);
        let mut entry_cuda = None;
        for (text, feature) in features() {
            match feature {
                FeatureRef::Cpu(wanted) => {
                    if !self.runs(wanted) {
                        return Err(Miss::Feature(text));
                    }
                    cpu_depth = cpu_depth.max(depth(wanted));
                }
                FeatureRef::NvCap { major, minor } => match self.nvcap {
                    Some((own_major, own_minor)) if own_major == major && own_minor >= minor => nvcap = (major, minor),
                    _ => return Err(Miss::Feature(text)),
                },
                // A `cuda:M.m` entry feature is a requirement like `cuda>=M.m` in its config.
                FeatureRef::Other(_) if let Some(cuda) = text.strip_prefix("cuda:").and_then(CudaVersion::parse) => {
                    entry_cuda = Some(cuda);
                }
                FeatureRef::Other(_) => {
                    if !self.features.iter().any(|own| feature == *own) {
                        return Err(Miss::Feature(text));
                    }
                }
            }
        }
        let cuda = match self.gpu_requirements(entry, entry_cuda).map(|r| r.check(&self.gpu)) {
            None => CudaVersion::default(),
            Some(Check::Runs { cuda }) => cuda,
            Some(Check::Misses(why)) => return Err(Miss::Gpu(why)),
        };
        Ok((cpu_depth, nvcap, entry.features.len(), cuda))
    }

    /// An entry's NVIDIA requirements: its config's and its `cuda:` feature, when it has either.
    fn gpu_requirements(&self, entry: &View, entry_cuda: Option<CudaVersion>) -> Option<Cow<'m, Requirements>> {
        let config = self.requirements.get(&*entry.digest).filter(|r| !r.is_empty());
        match (config, entry_cuda) {
            (None, None) => None,
            (Some(r), None) => Some(Cow::Borrowed(&**r)),
            (r, Some(cuda)) => {
                Some(Cow::Owned(r.map_or_else(Requirements::default, |r| (**r).clone()).with_entry_cuda(cuda)))
            }
        }
    }

    /// Why a fitting entry fits.
    fn fits_because(&self, entry: &View) -> String {
        let mut why = Vec::new();
        if let Level::Archspec(level) = entry.level {
            why.push(format!("{} needs {level}; {} runs it", entry.variant, self.cpu_name()));
        }
        if !entry.features.is_empty() {
            why.push("every feature is satisfied".to_owned());
        }
        if let Some(r) = self.requirements.get(&*entry.digest).filter(|r| !r.is_empty()) {
            why.push(format!("the driver meets its NVIDIA_REQUIRE_* (cuda>={})", r.cuda()));
        }
        if why.is_empty() { "generic: fits every machine".to_owned() } else { why.join("; ") }
    }

    /// Why an entry does not fit.
    fn misses_because(&self, entry: &View, miss: &Miss) -> String {
        match *miss {
            Miss::UnknownLevel => format!(
                "variant {} is no {} level archspec knows; no machine is known to run it",
                entry.variant, entry.architecture
            ),
            Miss::Level(level) => {
                let what = format!("{} needs {level}", entry.variant);
                match &self.cpu {
                    None => format!("{what}; the machine names no cpu"),
                    Some((name, _)) => match cpu_level(name, &entry.architecture) {
                        Some(own) => format!("{what}; {name} is {own}"),
                        None => format!("{what}; {name} is no {} cpu", entry.architecture),
                    },
                }
            }
            Miss::ExactFeatures => "exact mode: features differ from the machine's".to_owned(),
            Miss::Gpu(ref why) => why.clone(),
            Miss::Feature(text) => match FeatureRef::lenient(text) {
                FeatureRef::Cpu(wanted) => match &self.cpu {
                    None => format!("needs cpu:{wanted}; the machine names no cpu"),
                    Some((name, _)) => format!("needs cpu:{wanted}; cpu:{name} does not descend from it"),
                },
                FeatureRef::NvCap { major, minor } => match self.nvcap {
                    Some((own_major, own_minor)) => {
                        format!("needs nvcap:{major}.{minor}; the machine has nvcap:{own_major}.{own_minor}")
                    }
                    None => format!("needs nvcap:{major}.{minor}; the machine names no GPU"),
                },
                FeatureRef::Other(s) => format!("needs {s}; the machine lacks it"),
            },
        }
    }
}

/// What an entry misses to fit the machine.
enum Miss<'e> {
    /// A variant of a levelled architecture archspec has no level for.
    UnknownLevel,
    /// The archspec level its variant implies, which the machine's cpu does not run.
    Level(&'static str),
    /// Exact mode, and its features are not the machine's.
    ExactFeatures,
    /// The first of its features the machine does not satisfy.
    Feature(&'e str),
    /// Its NVIDIA requirements (config and `cuda:` feature), which the machine's driver does not meet, and why.
    Gpu(String),
}

/// What became of an entry.
enum Outcome<'e> {
    /// The most specific fitting entry of its platform group: served.
    Best,
    /// Fits, but a more specific entry of its platform group is served.
    Outranked,
    Missed(Miss<'e>),
    /// An attestation: served when the entry it describes is.
    Attestation {
        served: bool,
    },
}

impl Outcome<'_> {
    fn served(&self) -> bool {
        matches!(self, Outcome::Best | Outcome::Attestation { served: true })
    }
}

/// What becomes of every entry, in index order. One pass: each entry is matched once and competes for its group's
/// place in a map, so the cost is linear in the number of entries.
fn select<'e>(entries: &'e [View<'_>], host: &Host) -> Vec<Outcome<'e>> {
    let mut outcomes = Vec::with_capacity(entries.len());
    // Per platform group, the fitting entry with the highest rank; ties go to index order.
    let mut best: HashMap<(&str, &str, &str), (Rank, usize)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.attests.is_some() {
            outcomes.push(Outcome::Attestation { served: false });
            continue;
        }
        outcomes.push(match host.fit(entry) {
            Ok(rank) => {
                best.entry(entry.group())
                    .and_modify(|b| {
                        if rank > b.0 {
                            *b = (rank, i)
                        }
                    })
                    .or_insert((rank, i));
                Outcome::Outranked
            }
            Err(miss) => Outcome::Missed(miss),
        });
    }
    let mut served_digests = HashSet::new();
    for (_, i) in best.into_values() {
        outcomes[i] = Outcome::Best;
        served_digests.insert(&*entries[i].digest);
    }
    for (entry, outcome) in entries.iter().zip(&mut outcomes) {
        if let Some(subject) = &entry.attests {
            *outcome = Outcome::Attestation { served: served_digests.contains(&**subject) };
        }
    }
    outcomes
}

/// Every entry with its verdict, in index order.
pub fn explain(index: &Index, machine: &MachineType) -> Vec<Verdict> {
    explain_gpu(index, machine, &NO_REQUIREMENTS)
}

/// [`explain`], with the NVIDIA requirements of the children read from their configs.
pub fn explain_gpu(index: &Index, machine: &MachineType, requirements: &GpuRequirements) -> Vec<Verdict> {
    let host = Host::with(machine, requirements);
    let views = &index.parsed.views;
    if machine.match_mode == MatchMode::Unfiltered {
        let reason = "unfiltered: this machine type (a resolver) is served the whole index";
        return (index.entries.iter())
            .map(|entry| Verdict { entry: entry.clone(), fits: true, served: true, reason: reason.to_owned() })
            .collect();
    }
    let outcomes = select(views, &host);
    (views.iter().zip(&index.entries).zip(outcomes))
        .map(|((view, entry), outcome)| {
            let (fits, served, reason) = match outcome {
                Outcome::Best => (true, true, host.fits_because(view)),
                Outcome::Outranked => (
                    true,
                    false,
                    format!("{}; but a more specific entry of the same platform is served", host.fits_because(view)),
                ),
                Outcome::Missed(miss) => (false, false, host.misses_because(view, &miss)),
                Outcome::Attestation { served } => {
                    let reason =
                        if served { "attestation of a served entry" } else { "attestation of an entry not served" };
                    (served, served, reason.to_owned())
                }
            };
            Verdict { entry: entry.clone(), fits, served, reason }
        })
        .collect()
}

/// Filters `upstream` (an OCI index or Docker manifest list, as the upstream serves it) for `machine`. When filtering
/// keeps every entry unchanged, the answer is `upstream` itself: the upstream's bytes under the upstream's digest
/// (signatures and pins of the index stay valid); else the filtered bytes under their own digest. An `unfiltered`
/// machine type (a resolver) is answered with `upstream` itself, once it parses as an index.
pub fn filter_index(upstream: &Manifest, machine: &MachineType) -> Result<Manifest> {
    filter_index_gpu(upstream, machine, &NO_REQUIREMENTS)
}

/// [`filter_index`], with the NVIDIA requirements of the children (by digest) read from their configs: a child whose
/// requirements the machine's driver does not meet is not served, and among the builds it runs the newest CUDA wins.
pub fn filter_index_gpu(
    upstream: &Manifest,
    machine: &MachineType,
    requirements: &GpuRequirements,
) -> Result<Manifest> {
    let (bytes, media_type) = (&upstream.bytes[..], upstream.media_type.as_str());
    let index = Parsed::parse(bytes)?;
    if machine.match_mode == MatchMode::Unfiltered {
        return Ok(upstream.clone());
    }
    let outcomes = select(&index.views, &Host::with(machine, requirements));
    if !outcomes.iter().any(|o| matches!(o, Outcome::Best)) {
        return Err(nothing_fits(machine, &index.views, requirements));
    }
    let serialize = |e: serde_json::Error| Error::internal(format!("serializing index: {e}"));
    let mut kept: Vec<Cow<'_, str>> = Vec::with_capacity(outcomes.len());
    for ((raw, view), outcome) in index.raw_entries.iter().zip(&index.views).zip(&outcomes) {
        if outcome.served() {
            kept.push(served_form(raw, view)?);
        }
    }
    let media_type = index
        .object
        .get("mediaType")
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
        .unwrap_or_else(|| media_type.to_owned());
    if kept.len() == outcomes.len() && kept.iter().all(|k| matches!(k, Cow::Borrowed(_))) {
        return Ok(Manifest { digest: upstream.digest.clone(), bytes: upstream.bytes.clone(), media_type });
    }
    let kept = RawValue::from_string(format!("[{}]", kept.join(","))).map_err(serialize)?;
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
fn served_form<'a>(raw: &'a str, entry: &View) -> Result<Cow<'a, str>> {
    let architecture = normalized_architecture(&entry.architecture);
    let plain_variant = entry.variant.is_empty() || (architecture == "arm64" && entry.variant == "v8");
    let plain = plain_variant && architecture == entry.architecture;
    if plain || entry.level == Level::NotALevel || entry.attests.is_some() {
        return Ok(Cow::Borrowed(raw));
    }
    let malformed = |e: serde_json::Error| Error::bad_gateway(format!("upstream index entry is malformed: {e}"));
    let mut object: IndexMap<String, &RawValue> = serde_json::from_str(raw).map_err(malformed)?;
    let Some(platform) = object.get("platform") else { return Ok(Cow::Borrowed(raw)) };
    let mut platform: IndexMap<String, &RawValue> = serde_json::from_str(platform.get()).map_err(malformed)?;
    if !plain_variant {
        platform.shift_remove("variant");
    }
    let spelled = serde_json::value::to_raw_value(architecture).map_err(|e| Error::internal(e.to_string()))?;
    if architecture != &*entry.architecture {
        platform.insert("architecture".to_owned(), &spelled);
    }
    let serialize = |e: serde_json::Error| Error::internal(format!("serializing index entry: {e}"));
    let platform = RawValue::from_string(serde_json::to_string(&platform).map_err(serialize)?).map_err(serialize)?;
    object.insert("platform".to_owned(), &platform);
    Ok(Cow::Owned(serde_json::to_string(&object).map_err(serialize)?))
}

fn nothing_fits(machine: &MachineType, entries: &[View], requirements: &GpuRequirements) -> Error {
    let mut offered: Vec<String> = entries
        .iter()
        .filter(|e| e.attests.is_none())
        .map(|e| {
            let features: Vec<&str> = e.features.iter().map(|f| &**f).collect();
            let nvidia = match requirements.get(&*e.digest).filter(|r| !r.is_empty()) {
                Some(r) => format!(" (NVIDIA_REQUIRE_CUDA: cuda>={})", r.cuda()),
                None => String::new(),
            };
            format!("{} [{}]{nvidia}", platform_text(&e.os, &e.architecture, &e.variant), features.join(", "))
        })
        .collect();
    offered.dedup();
    Error::manifest_unknown(format!(
        "no image of this index fits machine type {:?} [{}]; on offer: {}",
        machine.name.as_str(),
        machine.features.join(", "),
        offered.join("; ")
    ))
    .with_detail(serde_json::json!({"machineType": machine.name, "offered": offered}))
}

#[cfg(test)]
mod tests;
