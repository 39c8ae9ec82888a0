//! Index filtering: which entries of an upstream image index a machine type is served.
//!
//! A pure function of (index bytes, machine type): the output keeps every field of the input it does not drop, in
//! the input's order, so the same inputs always give the same bytes and digest.
//!
//! The index is read as raw JSON values (validated, not built into a tree) and only the entries' few fields the
//! matcher needs are decoded; the output writes the kept fields and entries back as the upstream spelled them.

use crate::error::{Error, Result};
use crate::machine::{Feature, MachineType, MatchMode};
use crate::reference::Digest;
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

const ATTESTATION_TYPE: &str = "vnd.docker.reference.type";
const ATTESTATION_SUBJECT: &str = "vnd.docker.reference.digest";

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

    fn group(&self) -> (&str, &str, &str) {
        (&self.os, &self.architecture, &self.variant)
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

/// Specificity of a fitting entry: cpu depth in the µarch DAG, nvcap, number of features. Greater is more specific.
type Rank = (usize, (u32, u32), usize);

/// How well an entry's features fit `machine`: its rank, or why it does not fit.
fn fit_rank(entry_features: &[Feature], machine: &MachineType, machine_features: &[Feature]) -> Result<Rank, String> {
    if machine.match_mode == MatchMode::Exact && !entry_features.is_empty() {
        let same = entry_features.len() == machine_features.len()
            && entry_features.iter().all(|f| machine_features.contains(f));
        return if same {
            Ok((0, (0, 0), entry_features.len()))
        } else {
            Err("exact mode: features differ from the machine's".into())
        };
    }
    let mut cpu_depth = 0;
    let mut nvcap = (0, 0);
    for feature in entry_features {
        match feature {
            Feature::Cpu(wanted) => {
                let host = machine_features.iter().find_map(|f| match f {
                    Feature::Cpu(name) => Some(name),
                    _ => None,
                });
                let Some(host) = host else { return Err(format!("needs cpu:{wanted}; the machine names no cpu")) };
                let runs = host == wanted
                    || feature.microarchitecture().is_some_and(|want| {
                        Feature::Cpu(host.clone())
                            .microarchitecture()
                            .is_some_and(|h| h.ancestors().iter().any(|a| a.name() == want.name()))
                    });
                if !runs {
                    return Err(format!("needs cpu:{wanted}; cpu:{host} does not descend from it"));
                }
                cpu_depth = feature.microarchitecture().map_or(0, |m| m.ancestors().len() + 1);
            }
            Feature::NvCap { major, minor } => {
                let host = machine_features.iter().find_map(|f| match f {
                    Feature::NvCap { major, minor } => Some((*major, *minor)),
                    _ => None,
                });
                match host {
                    Some((hmaj, hmin)) if hmaj == *major && hmin >= *minor => nvcap = (*major, *minor),
                    Some((hmaj, hmin)) => {
                        return Err(format!("needs nvcap:{major}.{minor}; the machine has nvcap:{hmaj}.{hmin}"));
                    }
                    None => return Err(format!("needs nvcap:{major}.{minor}; the machine names no GPU")),
                }
            }
            Feature::Other(s) => {
                if !machine_features.contains(feature) {
                    return Err(format!("needs {s}; the machine lacks it"));
                }
            }
        }
    }
    Ok((cpu_depth, nvcap, entry_features.len()))
}

/// Every entry with its verdict, in index order.
pub fn explain(index: &Index, machine: &MachineType) -> Vec<Verdict> {
    let machine_features = machine.parsed_features();
    let outcomes: Vec<Result<Rank, String>> = index
        .entries
        .iter()
        .map(|e| {
            let features: Vec<Feature> = e.features.iter().map(|f| Feature::parse_lenient(f)).collect();
            fit_rank(&features, machine, &machine_features)
        })
        .collect();
    let ranks: Vec<Option<Rank>> = outcomes.iter().map(|o| o.as_ref().ok().copied()).collect();
    let mut verdicts: Vec<Verdict> = index
        .entries
        .iter()
        .zip(outcomes)
        .map(|(entry, outcome)| {
            let (fits, reason) = match outcome {
                Ok(_) if entry.features.is_empty() => (true, "generic: fits every machine".to_owned()),
                Ok(_) => (true, "every feature is satisfied".to_owned()),
                Err(why) => (false, why),
            };
            Verdict { entry: entry.clone(), fits, served: false, reason }
        })
        .collect();

    // Per platform group, serve the one fitting entry with the highest rank; ties go to index order.
    let mut groups_done: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut served_digests = HashSet::new();
    for (i, entry) in index.entries.iter().enumerate() {
        if entry.attests.is_some() || !groups_done.insert(entry.group()) {
            continue;
        }
        let best = (i..index.entries.len())
            .filter(|&j| index.entries[j].attests.is_none() && index.entries[j].group() == entry.group())
            .filter_map(|j| ranks[j].map(|r| (r, j)))
            .fold(None::<(Rank, usize)>, |best, (r, j)| match best {
                Some((br, _)) if br >= r => best,
                _ => Some((r, j)),
            });
        if let Some((_, j)) = best {
            verdicts[j].served = true;
            served_digests.insert(index.entries[j].digest.clone());
        }
    }
    for v in &mut verdicts {
        if let Some(subject) = &v.entry.attests {
            v.fits = served_digests.contains(subject);
            v.served = v.fits;
            v.reason =
                if v.fits { "attestation of a served entry" } else { "attestation of an entry not served" }.into();
        } else if v.fits && !v.served {
            v.reason = "fits, but a more specific entry of the same platform is served".into();
        }
    }
    verdicts
}

/// The filtered index: exact bytes and their digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Filtered {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

/// Filters `bytes` (an OCI index or Docker manifest list) for `machine`.
pub fn filter_index(bytes: &[u8], media_type: &str, machine: &MachineType) -> Result<Filtered> {
    let index = Index::parse(bytes)?;
    let verdicts = explain(&index, machine);
    if !verdicts.iter().any(|v| v.served && v.entry.attests.is_none()) {
        return Err(nothing_fits(machine, &index));
    }
    let kept: Vec<&RawValue> =
        index.raw_entries.iter().zip(&verdicts).filter(|(_, v)| v.served).map(|(e, _)| *e).collect();
    let serialize = |e: serde_json::Error| Error::internal(format!("serializing index: {e}"));
    let kept = RawValue::from_string(serde_json::to_string(&kept).map_err(serialize)?).map_err(serialize)?;
    let mut object = index.object;
    object.insert("manifests".to_owned(), &kept);
    let bytes = serde_json::to_vec(&object).map_err(serialize)?;
    let media_type = object
        .get("mediaType")
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
        .unwrap_or_else(|| media_type.to_owned());
    Ok(Filtered { digest: Digest::sha256_of(&bytes), bytes, media_type })
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
