//! Index filtering from any bytes: no panic; an accepted index gives valid JSON whose digest is the sha256 of the
//! bytes served; filtering is deterministic and idempotent (filtering the output again changes nothing); at most one
//! image per platform group is served, and the index's own fields survive; never an entry whose level (the CPU level
//! its `platform.variant` implies) or `cpu:` the machine cannot run, checked against the archspec DAG directly.
//! A served entry is an input entry as written, or (amd64/arm64 level builds) the same with its variant dropped and
//! its architecture spelled as Go does.
//!
//! The first byte picks the machine type and the media type passed; the rest is the index.
//! Inputs that are JSON but beyond what serde_json's `Value` holds (numbers past f64, lone surrogate escapes) are
//! passed through as the upstream spelled them: for those, the output must be JSON as the input was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metahub_core::ErrorCode;
use metahub_core::filter::{DOCKER_LIST, Index, OCI_INDEX, explain, filter_index};
use metahub_core::machine::{Feature, Level, MachineType, MatchMode};
use metahub_core::ports::Manifest;
use metahub_core::reference::Digest;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::sync::LazyLock;

static MACHINES: LazyLock<Vec<MachineType>> = LazyLock::new(|| {
    let types: &[(&str, &[&str], MatchMode)] = &[
        ("skylake", &["cpu:skylake"], MatchMode::Best),
        ("cascadelake-a100", &["cpu:cascadelake", "nvcap:8.6"], MatchMode::Best),
        ("zen2", &["cpu:zen2"], MatchMode::Best),
        ("broadwell-m60", &["cpu:broadwell", "nvcap:5.2"], MatchMode::Best),
        ("exact-skylake", &["cpu:skylake"], MatchMode::Exact),
        ("graviton", &["cpu:neoverse_v1"], MatchMode::Best),
        ("plain", &[], MatchMode::Best),
        ("efa", &["cpu:x86_64_v3", "fabric:efa"], MatchMode::Exact),
        ("core2", &["cpu:core2"], MatchMode::Best),
        ("nehalem", &["cpu:nehalem"], MatchMode::Best),
        ("icelake-exact", &["cpu:icelake"], MatchMode::Exact),
        ("neoverse_n1", &["cpu:neoverse_n1"], MatchMode::Best),
    ];
    types
        .iter()
        .map(|(name, features, mode)| {
            MachineType::new(name, features.iter().map(|f| f.to_string()).collect(), *mode).expect("valid machine type")
        })
        .collect()
});

fn group(entry: &Value) -> (String, String, String) {
    let text =
        |k: &str| entry.get("platform").and_then(|p| p.get(k)).and_then(Value::as_str).unwrap_or_default().to_owned();
    (text("os"), text("architecture"), text("variant"))
}

/// `output` is `input` as served: the same, or with `platform.variant` dropped and the architecture respelled.
fn served_form_of(input: &Value, output: &Value) -> bool {
    if input == output {
        return true;
    }
    let mut i = input.clone();
    let (Some(ip), Some(op)) = (i.get_mut("platform").and_then(Value::as_object_mut), output.get("platform")) else {
        return false;
    };
    ip.remove("variant");
    if let Some(arch) = op.get("architecture") {
        ip.insert("architecture".into(), arch.clone());
    }
    &i == output
}

/// Whether `machine`'s cpu is `name` or descends from it in the archspec DAG.
fn machine_runs(machine: &MachineType, name: &str) -> bool {
    let cpu = machine.features().cpu();
    let Some(host) = cpu.and_then(|c| Feature::Cpu(c.to_owned()).microarchitecture()) else { return false };
    host.name() == name || host.ancestors().iter().any(|a| a.name() == name)
}

fn is_attestation(entry: &Value) -> bool {
    entry.get("annotations").and_then(|a| a.get("vnd.docker.reference.type")).and_then(Value::as_str)
        == Some("attestation-manifest")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let machine = &MACHINES[selector as usize % MACHINES.len()];
    let media_type = if selector & 0x80 == 0 { OCI_INDEX } else { DOCKER_LIST };

    if let Ok(index) = Index::parse(bytes) {
        let verdicts = explain(&index, machine);
        assert_eq!(verdicts.len(), index.entries.len());
        assert!(verdicts.iter().all(|v| v.fits || !v.served), "an entry that does not fit was served");
    }

    let upstream =
        Manifest { digest: Digest::sha256_of(bytes), media_type: media_type.to_owned(), bytes: bytes.to_vec().into() };
    let filtered = match filter_index(&upstream, machine) {
        Ok(f) => f,
        Err(e) => {
            assert!(matches!(e.code, ErrorCode::BadGateway | ErrorCode::ManifestUnknown), "{e:?}");
            return;
        }
    };
    // digest of the exact bytes; deterministic
    assert_eq!(filtered.digest.as_str(), format!("sha256:{}", hex::encode(Sha256::digest(&filtered.bytes))));
    assert_eq!(filter_index(&upstream, machine).ok().as_ref(), Some(&filtered));
    if serde_json::from_slice::<Value>(bytes).is_err() {
        // Grammatical JSON that serde_json's Value cannot hold (a number beyond f64, a lone surrogate escape): the
        // filter keeps the upstream's spelling of what it does not read, so the output is as valid as the input.
        serde_json::from_slice::<serde::de::IgnoredAny>(&filtered.bytes).expect("the filtered index is JSON");
        let again = filter_index(&filtered, machine).expect("refiltering succeeds");
        assert_eq!(again, filtered, "filtering twice differs from filtering once");
        return;
    }
    // valid JSON
    let out: Value = serde_json::from_slice(&filtered.bytes).expect("the filtered index is JSON");
    // idempotent
    let again = filter_index(&filtered, machine);
    match &again {
        Ok(a) => assert!(
            a == &filtered,
            "filtering twice differs from filtering once:\nonce:  {}\ntwice: {}",
            String::from_utf8_lossy(&filtered.bytes),
            String::from_utf8_lossy(&a.bytes)
        ),
        Err(e) => panic!("filtering the filtered index failed: {e:?}\n{}", String::from_utf8_lossy(&filtered.bytes)),
    }

    // the index's own fields survive, in order; entries are a subset of the input's; one image per group
    let input: serde_json::Map<String, Value> = serde_json::from_slice(bytes).expect("accepted input is a JSON object");
    let out = out.as_object().expect("an object");
    assert_eq!(input.keys().collect::<Vec<_>>(), out.keys().collect::<Vec<_>>());
    let in_entries = input["manifests"].as_array().expect("a list");
    let out_entries = out["manifests"].as_array().expect("a list");
    assert!(out_entries.iter().any(|e| !is_attestation(e)), "an index without an image was served");
    let mut groups = HashSet::new();
    for e in out_entries {
        let Some(original) = in_entries.iter().find(|i| served_form_of(i, e)) else {
            panic!("entry not in the input: {e}")
        };
        if !is_attestation(e) {
            assert!(groups.insert(group(e)), "two images of one platform group served: {e}");
            // never a level or cpu the machine cannot run
            let (_, arch, variant) = group(original);
            match Level::of(&arch, &variant) {
                Level::Archspec(level) => assert!(machine_runs(machine, level), "{} served {original}", machine.name()),
                Level::Unknown => panic!("{} served {original}, a level no machine is known to run", machine.name()),
                Level::Baseline | Level::NotALevel => {}
            }
            let features = original.get("platform").and_then(|p| p.get("features")).and_then(Value::as_array);
            for cpu in features.into_iter().flatten().filter_map(Value::as_str).filter_map(|f| f.strip_prefix("cpu:")) {
                let known = Feature::Cpu(cpu.to_owned()).microarchitecture().is_some();
                let same = machine.features().cpu() == Some(cpu);
                assert!(same || (known && machine_runs(machine, cpu)), "{} served {original}", machine.name());
            }
        }
    }
});
