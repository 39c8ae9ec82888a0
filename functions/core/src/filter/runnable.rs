//! Never a build the machine cannot run: which entries of an index a machine type's clients may take, and whether
//! the machine runs a build. The pull-by-digest paths (`service.rs`) serve an index or a child only when every
//! build its clients may take is one the machine runs.
//!
//! Which entry a client takes, read from their matchers (the evidence is at `served_form` in `filter.rs`): the first
//! entry of the host's plain platform, in index order.
//! - containers/image (skopeo, podman, CRI-O) wants `linux/<GOARCH>` with variant "" (and "v8" on arm64), spelled
//!   exactly so;
//! - containerd and Docker Engine normalize (`x86_64` → `amd64`, `amd64/v1` → `amd64`, `arm64/v8` → `arm64`); a
//!   containerd that detects the host's amd64 level (containerd/platforms ≥ 1.0) also takes `v2`…`vN` up to it.
//!
//! The prediction is the union over those rules: the first entry of each form some client may accept. An index is
//! safe for a machine when the machine runs every predicted entry.

use super::Host;
use super::wire::{Parsed, Text, View, normalized_architecture, platform_text};
use crate::error::Result;
use crate::machine::{Level, MachineType, MatchMode};
use crate::nvidia::GpuRequirements;
use archspec::cpu::Microarchitecture;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashSet;

/// A child's platform as an upstream index lists it: what running the build requires (its level and features).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Platform {
    fn of(view: &View) -> Platform {
        Platform {
            os: view.os.to_string(),
            architecture: view.architecture.to_string(),
            variant: view.variant.to_string(),
            features: view.features.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn view<'p>(&'p self, digest: &'p str) -> View<'p> {
        View {
            digest: Cow::Borrowed(digest),
            os: Cow::Borrowed(&self.os),
            architecture: Cow::Borrowed(&self.architecture),
            variant: Cow::Borrowed(&self.variant),
            features: self.features.iter().map(|f| Text(Cow::Borrowed(f))).collect(),
            level: Level::of(&self.architecture, &self.variant),
            attests: None,
        }
    }

    /// Whether running it requires anything beyond its os and architecture.
    pub fn has_requirements(&self) -> bool {
        !self.features.is_empty() || !matches!(Level::of(&self.architecture, &self.variant), Level::Baseline)
    }
}

impl std::fmt::Display for Platform {
    /// `linux/amd64/v3 [cpu:zen3]`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&platform_text(&self.os, &self.architecture, &self.variant))?;
        if !self.features.is_empty() {
            write!(f, " [{}]", self.features.join(", "))?;
        }
        Ok(())
    }
}

/// An entry of an index, as listed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub digest: String,
    pub platform: Platform,
}

/// Every build of an index (attestations left out), as listed there: what MetaHub records of the children it reads.
pub fn children(index_bytes: &[u8]) -> Result<Vec<Listed>> {
    let parsed = Parsed::parse(index_bytes)?;
    Ok(parsed
        .views
        .iter()
        .filter(|v| v.attests.is_none())
        .map(|v| Listed { digest: v.digest.to_string(), platform: Platform::of(v) })
        .collect())
}

/// The entries of an index that `machine`'s clients may take, in index order, each once.
pub fn client_choices(index_bytes: &[u8], machine: &MachineType) -> Result<Vec<Listed>> {
    let parsed = Parsed::parse(index_bytes)?;
    let host = Host::of(machine);
    let architecture = host_architecture(machine);
    let mut forms_taken: HashSet<(String, String)> = HashSet::new();
    let mut choices = Vec::new();
    for view in parsed.views.iter().filter(|v| v.attests.is_none() && v.os == "linux") {
        let normalized = normalized_architecture(&view.architecture);
        if architecture.is_some_and(|a| a != normalized) {
            continue;
        }
        let mut taken = false;
        for form in forms(view, normalized, &host) {
            taken |= forms_taken.insert((normalized.to_owned(), form));
        }
        if taken {
            choices.push(Listed { digest: view.digest.to_string(), platform: Platform::of(view) });
        }
    }
    Ok(choices)
}

/// The platform forms under which some client may take `view` on a host of `normalized` architecture.
fn forms(view: &View, normalized: &str, host: &Host) -> Vec<String> {
    let variant: &str = &view.variant;
    let mut forms = Vec::new();
    match view.level {
        // 32-bit arm, ppc64le, s390x …: the variant is the platform's, compared by every client.
        Level::NotALevel => forms.push(format!("variant {variant}")),
        _ => {
            let plain = variant.is_empty() || (normalized == "arm64" && variant == "v8");
            // containers/image: the exact GOARCH spelling and a plain variant
            if plain && view.architecture == normalized {
                forms.push(format!("exact {variant}"));
            }
            // containerd and Docker: any spelling; `v1`, `v8` and `v8.0` are the baseline
            if matches!(view.level, Level::Baseline) {
                forms.push("normalized baseline".to_owned());
            }
            // a containerd that detects the host's level takes any level up to it
            if let Level::Archspec(level) = view.level
                && host.runs(level)
            {
                forms.push(format!("level {variant}"));
            }
        }
    }
    forms
}

/// The architecture (as clients normalize it) of the machine's cpu, or `None` when it names none: then its clients
/// may run on any.
fn host_architecture(machine: &MachineType) -> Option<&'static str> {
    let cpu = machine.features.cpu()?;
    let family = Microarchitecture::known_targets().get(cpu)?.family().name().to_owned();
    Some(match family.as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "ppc64le" => "ppc64le",
        "ppc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        _ => return None,
    })
}

/// Why `machine` cannot run the build `digest` listed as `platform`, or `None` when it can: its CPU level and
/// features, its GPU capability and driver (`gpu`: the NVIDIA requirements read from the builds' configs), any other
/// feature. A capability, whatever the match mode: an `exact` machine runs a build of fewer features too.
pub fn cannot_run(machine: &MachineType, digest: &str, platform: &Platform, gpu: &GpuRequirements) -> Option<String> {
    let host = Host::capable(machine, gpu);
    let view = platform.view(digest);
    host.fit(&view).err().map(|miss| host.misses_because(&view, &miss))
}

impl<'m> Host<'m> {
    /// The machine as a judge of what it can run, not of what it prefers.
    fn capable(machine: &'m MachineType, gpu: &'m GpuRequirements) -> Host<'m> {
        Host { mode: MatchMode::Best, ..Host::with(machine, gpu) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(features: &[&str]) -> MachineType {
        MachineType::new("t", features.iter().map(|f| f.to_string()).collect(), MatchMode::Best).unwrap()
    }

    fn entry(digest: &str, platform: &str, features: &[&str]) -> serde_json::Value {
        let mut parts = platform.split('/');
        let (os, architecture, variant) = (parts.next(), parts.next(), parts.next());
        let mut p = serde_json::json!({"os": os, "architecture": architecture});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        if !features.is_empty() {
            p["features"] = features.into();
        }
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1,
            "digest": format!("sha256:{}", digest.repeat(64)), "platform": p})
    }

    fn index(entries: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": super::super::OCI_INDEX,
            "manifests": entries}))
        .unwrap()
    }

    fn choices(bytes: &[u8], features: &[&str]) -> Vec<String> {
        client_choices(bytes, &machine(features)).unwrap().into_iter().map(|c| c.digest[7..8].to_owned()).collect()
    }

    #[test]
    fn clients_take_the_first_plain_entry_of_the_hosts_architecture() {
        let skylake_first = index(vec![
            entry("a", "linux/amd64", &["cpu:skylake"]),
            entry("b", "linux/amd64", &[]),
            entry("c", "linux/arm64", &[]),
        ]);
        assert_eq!(choices(&skylake_first, &["cpu:zen2"]), ["a"]);
        assert_eq!(choices(&skylake_first, &["cpu:neoverse_v1"]), ["c"]);
        // no cpu named: the machine may be either architecture
        assert_eq!(choices(&skylake_first, &["nvcap:8.0"]), ["a", "c"]);
    }

    #[test]
    fn spellings_and_levels_each_client_may_take() {
        let bytes = index(vec![
            entry("a", "linux/x86_64", &[]),   // containerd only (normalized)
            entry("b", "linux/amd64/v3", &[]), // a level-detecting containerd on a v3 host
            entry("c", "linux/amd64/v4", &[]), // never on a v3 host
            entry("d", "linux/amd64", &[]),    // containers/image
            entry("e", "linux/amd64", &[]),    // nobody: d comes first
            entry("f", "windows/amd64", &[]),  // not a Linux node's
        ]);
        assert_eq!(choices(&bytes, &["cpu:zen2"]), ["a", "b", "d"]);
        assert_eq!(choices(&bytes, &["cpu:core2"]), ["a", "d"]);
    }

    #[test]
    fn a_machine_runs_its_level_and_features_only() {
        let zen2 = machine(&["cpu:zen2"]);
        let none = GpuRequirements::new();
        let cannot_run = |m: &MachineType, gpu: &GpuRequirements, d: &str, p: &Platform| cannot_run(m, d, p, gpu);
        let p = |arch: &str, variant: &str, features: &[&str]| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        };
        assert_eq!(cannot_run(&zen2, &none, "d", &p("amd64", "", &[])), None);
        assert_eq!(cannot_run(&zen2, &none, "d", &p("amd64", "v3", &[])), None);
        assert!(cannot_run(&zen2, &none, "d", &p("amd64", "v4", &[])).unwrap().contains("x86_64_v4"));
        assert!(cannot_run(&zen2, &none, "d", &p("amd64", "", &["cpu:zen3"])).unwrap().contains("cpu:zen3"));
        assert!(cannot_run(&zen2, &none, "d", &p("amd64", "", &["nvcap:7.0"])).unwrap().contains("nvcap:7.0"));
        // exact mode judges capability, not preference
        let exact = MachineType::new("x", vec!["cpu:skylake".into(), "nvcap:7.0".into()], MatchMode::Exact).unwrap();
        assert_eq!(cannot_run(&exact, &none, "d", &p("amd64", "", &["cpu:broadwell"])), None);
        assert!(p("amd64", "v3", &[]).has_requirements() && !p("amd64", "v1", &[]).has_requirements());
        assert_eq!(p("amd64", "v3", &["cpu:zen3"]).to_string(), "linux/amd64/v3 [cpu:zen3]");
    }

    #[test]
    fn children_leave_attestations_out() {
        let mut att = entry("z", "unknown/unknown", &[]);
        att["annotations"] = serde_json::json!({"vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": format!("sha256:{}", "a".repeat(64))});
        let bytes = index(vec![entry("a", "linux/amd64/v3", &["cpu:zen3"]), att]);
        let listed = children(&bytes).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].platform.variant, "v3");
    }
}
