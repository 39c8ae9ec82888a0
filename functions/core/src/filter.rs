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
use crate::ports::Manifest;
use crate::reference::Digest;
use archspec::cpu::Microarchitecture;
use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Deref;

mod runnable;
pub use runnable::{Listed, Platform, cannot_run, children, client_choices};

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

/// The fields of an index entry the matcher reads; everything else stays in the raw entry. Strings are borrowed
/// from the index bytes unless an escape forces a copy.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireEntry<'a> {
    #[serde(borrow)]
    digest: Cow<'a, str>,
    #[serde(borrow)]
    platform: Option<WirePlatform<'a>>,
    #[serde(borrow)]
    annotations: Option<WireAnnotations<'a>>,
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
    features: Option<Vec<Text<'a>>>,
}

/// A JSON string borrowed from the index bytes, or copied where it has escapes (serde borrows a `Cow` only as a
/// struct's own field, not inside a list or map).
#[derive(Debug, Clone, Default)]
struct Text<'a>(Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Borrowing;
        impl<'de> Visitor<'de> for Borrowing {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        deserializer.deserialize_str(Borrowing).map(Text)
    }
}

/// The two annotations that mark an attestation; any others are read (they must be strings) and dropped, and the
/// last of a repeated key counts.
#[derive(Default)]
struct WireAnnotations<'a> {
    kind: Option<Text<'a>>,
    subject: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireAnnotations<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Annotations<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Annotations<'a> {
            type Value = WireAnnotations<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> std::result::Result<Self::Value, M::Error> {
                let mut annotations = WireAnnotations::default();
                while let Some((key, value)) = map.next_entry::<Text<'a>, Text<'a>>()? {
                    match &*key {
                        ATTESTATION_TYPE => annotations.kind = Some(value),
                        ATTESTATION_SUBJECT => annotations.subject = Some(value),
                        _ => {}
                    }
                }
                Ok(annotations)
            }
        }
        deserializer.deserialize_map(Annotations(std::marker::PhantomData))
    }
}

/// What the matcher reads of an index entry, borrowed from the index bytes.
struct View<'a> {
    digest: Cow<'a, str>,
    os: Cow<'a, str>,
    architecture: Cow<'a, str>,
    variant: Cow<'a, str>,
    features: Vec<Text<'a>>,
    /// The CPU level `variant` implies on `architecture`.
    level: Level,
    /// For an attestation manifest: the digest of the entry it describes.
    attests: Option<Text<'a>>,
}

impl<'a> View<'a> {
    fn of(wire: WireEntry<'a>, position: usize) -> Result<View<'a>> {
        if wire.digest.is_empty() {
            return Err(Error::bad_gateway(format!("upstream index entry {position} has no digest")));
        }
        let platform = wire.platform.unwrap_or_default();
        let attests = wire
            .annotations
            .and_then(|a| (a.kind.as_deref() == Some("attestation-manifest")).then(|| a.subject.unwrap_or_default()));
        Ok(View {
            level: Level::of(&platform.architecture, &platform.variant),
            digest: wire.digest,
            os: platform.os,
            architecture: platform.architecture,
            variant: platform.variant,
            features: platform.features.unwrap_or_default(),
            attests,
        })
    }

    fn to_entry(&self) -> Entry {
        Entry {
            digest: self.digest.to_string(),
            os: self.os.to_string(),
            architecture: self.architecture.to_string(),
            variant: self.variant.to_string(),
            features: self.features.iter().map(|f| f.to_string()).collect(),
            level: self.level,
            attests: self.attests.as_ref().map(|a| a.to_string()),
        }
    }

    /// The platform group: (os, architecture), and the variant only where it is not a level (32-bit arm …).
    fn group(&self) -> (&str, &str, &str) {
        match self.level {
            Level::NotALevel => (&self.os, &self.architecture, &self.variant),
            _ => (&self.os, normalized_architecture(&self.architecture), ""),
        }
    }
}

/// `os/architecture[/variant]`.
fn platform_text(os: &str, architecture: &str, variant: &str) -> String {
    match variant {
        "" => format!("{os}/{architecture}"),
        v => format!("{os}/{architecture}/{v}"),
    }
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

/// A parsed index, for `explain`: every entry as the matcher reads it, and an owned copy of each.
pub struct Index<'a> {
    parsed: Parsed<'a>,
    pub entries: Vec<Entry>,
}

impl<'a> Index<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Index<'a>> {
        let parsed = Parsed::parse(bytes)?;
        let entries = parsed.views.iter().map(View::to_entry).collect();
        Ok(Index { parsed, entries })
    }
}

/// An index as the filter reads it: its fields as the upstream wrote them, each entry's text, and what the matcher
/// reads of each entry.
struct Parsed<'a> {
    object: IndexMap<String, &'a RawValue>,
    raw_entries: Vec<&'a str>,
    views: Vec<View<'a>>,
}

impl<'a> Parsed<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Parsed<'a>> {
        let object: IndexMap<String, &RawValue> = serde_json::from_slice(bytes)
            .map_err(|e| Error::bad_gateway(format!("upstream index is not a JSON object: {e}")))?;
        let list = object
            .get("manifests")
            .map(|m| m.get())
            .filter(|m| m.starts_with('['))
            .ok_or_else(|| Error::bad_gateway("upstream index has no manifests list"))?;
        let (raw_entries, views) = read_entries(list)?;
        Ok(Parsed { object, raw_entries, views })
    }
}

/// Reads a JSON list of index entries in one pass: each entry's text (to write it back as the upstream spelled it)
/// and what the matcher reads of it. `list` is a value the index's parse has already read as JSON, so between the
/// entries there is only whitespace and a comma; each entry is read by serde_json like any JSON text.
fn read_entries(list: &str) -> Result<(Vec<&str>, Vec<View<'_>>)> {
    fn skip_whitespace(s: &str) -> &str {
        s.trim_start_matches([' ', '\t', '\n', '\r'])
    }
    let (mut raw_entries, mut views) = (Vec::new(), Vec::new());
    let mut rest = skip_whitespace(&list[1..]);
    if rest.starts_with(']') {
        return Ok((raw_entries, views));
    }
    loop {
        let position = views.len();
        let malformed =
            |why: String| Error::bad_gateway(format!("upstream index entry {position} is malformed: {why}"));
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<WireEntry>();
        let wire = match stream.next() {
            Some(wire) => wire.map_err(|e| malformed(e.to_string()))?,
            None => return Err(malformed("no value".into())),
        };
        let end = stream.byte_offset();
        raw_entries.push(&rest[..end]);
        views.push(View::of(wire, position)?);
        rest = skip_whitespace(&rest[end..]);
        match rest.as_bytes().first() {
            Some(b',') => rest = skip_whitespace(&rest[1..]),
            Some(b']') => return Ok((raw_entries, views)),
            _ => return Err(malformed("expected , or ] after it".into())),
        }
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
                FeatureRef::Other(_) => {
                    if !self.features.iter().any(|own| feature == *own) {
                        return Err(Miss::Feature(text));
                    }
                }
            }
        }
        Ok((cpu_depth, nvcap, entry.features.len()))
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
    let host = Host::of(machine);
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
    let (bytes, media_type) = (&upstream.bytes[..], upstream.media_type.as_str());
    let index = Parsed::parse(bytes)?;
    if machine.match_mode == MatchMode::Unfiltered {
        return Ok(upstream.clone());
    }
    let outcomes = select(&index.views, &Host::of(machine));
    if !outcomes.iter().any(|o| matches!(o, Outcome::Best)) {
        return Err(nothing_fits(machine, &index.views));
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

fn nothing_fits(machine: &MachineType, entries: &[View]) -> Error {
    let mut offered: Vec<String> = entries
        .iter()
        .filter(|e| e.attests.is_none())
        .map(|e| {
            let features: Vec<&str> = e.features.iter().map(|f| &**f).collect();
            format!("{} [{}]", platform_text(&e.os, &e.architecture, &e.variant), features.join(", "))
        })
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
