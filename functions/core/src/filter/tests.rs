//! The matcher as tables: (machine features, mode) → the digests served.

use super::wire::read_entries;
use super::*;
use serde_json::json;

/// Filters `bytes` as the upstream's index under their own sha256 digest.
fn filter(bytes: &[u8], media_type: &str, machine: &MachineType) -> Result<Manifest> {
    let upstream = Manifest {
        digest: Digest::sha256_of(bytes),
        media_type: media_type.to_owned(),
        bytes: Bytes::copy_from_slice(bytes),
    };
    filter_index(&upstream, machine)
}

fn entry(digest: &str, arch: &str, features: &[&str]) -> Value {
    let mut platform = json!({"os": "linux", "architecture": arch});
    if !features.is_empty() {
        platform["features"] = json!(features);
    }
    json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform})
}

fn attestation(digest: &str, subject: &str) -> Value {
    json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 1,
        "platform": {"os": "unknown", "architecture": "unknown"},
        "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": subject}})
}

fn index() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            entry("generic", "amd64", &[]),
            entry("broadwell", "amd64", &["cpu:broadwell"]),
            entry("skylake", "amd64", &["cpu:skylake"]),
            entry("v3", "amd64", &["cpu:x86_64_v3"]),
            entry("skylake-70", "amd64", &["cpu:skylake", "nvcap:7.0"]),
            entry("skylake-80", "amd64", &["cpu:skylake", "nvcap:8.0"]),
            entry("skylake-90", "amd64", &["cpu:skylake", "nvcap:9.0"]),
            entry("arm-generic", "arm64", &[]),
            entry("neoverse", "arm64", &["cpu:neoverse_v1"]),
            attestation("att-skylake", "skylake"),
            attestation("att-broadwell", "broadwell"),
        ],
        "annotations": {"org.opencontainers.image.created": "2026-01-01"},
        "x-unknown": {"kept": true}
    }))
    .unwrap()
}

fn served(features: &[&str], mode: MatchMode) -> Vec<String> {
    let machine = MachineType::new("m", features.iter().map(|s| s.to_string()).collect(), mode).unwrap();
    let out = filter(&index(), OCI_INDEX, &machine).unwrap();
    let v: Value = serde_json::from_slice(&out.bytes).unwrap();
    v["manifests"].as_array().unwrap().iter().map(|e| e["digest"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn best_mode_table() {
    use MatchMode::Best;
    let table: &[(&[&str], &[&str])] = &[
        (&["cpu:cascadelake"], &["skylake", "arm-generic", "att-skylake"]),
        (&["cpu:broadwell"], &["broadwell", "arm-generic", "att-broadwell"]),
        (&["cpu:haswell"], &["v3", "arm-generic"]),
        (&["cpu:zen2"], &["v3", "arm-generic"]), // zen2 descends from x86_64_v3 but not from haswell
        (&["cpu:nehalem"], &["generic", "arm-generic"]),
        (&["cpu:cascadelake", "nvcap:8.6"], &["skylake-80", "arm-generic"]),
        (&["cpu:skylake", "nvcap:7.5"], &["skylake-70", "arm-generic"]),
        (&["cpu:skylake", "nvcap:6.1"], &["skylake", "arm-generic", "att-skylake"]),
        (&["nvcap:8.6"], &["generic", "arm-generic"]),
        (&["cpu:neoverse_v1"], &["generic", "neoverse"]),
        (&[], &["generic", "arm-generic"]),
    ];
    for (features, want) in table {
        assert_eq!(served(features, Best), *want, "{features:?}");
    }
}

#[test]
fn zen2_gets_generic_when_no_level_build() {
    let bytes = serde_json::to_vec(&json!({"manifests": [
        entry("generic", "amd64", &[]), entry("haswell", "amd64", &["cpu:haswell"])]}))
    .unwrap();
    let zen2 = MachineType::new("zen2", vec!["cpu:zen2".into()], MatchMode::Best).unwrap();
    let out = filter(&bytes, OCI_INDEX, &zen2).unwrap();
    assert!(String::from_utf8_lossy(&out.bytes).contains("\"generic\""));
}

#[test]
fn exact_mode_table() {
    use MatchMode::Exact;
    assert_eq!(served(&["cpu:skylake"], Exact), ["skylake", "arm-generic", "att-skylake"]);
    assert_eq!(served(&["cpu:cascadelake"], Exact), ["generic", "arm-generic"]);
    assert_eq!(served(&["nvcap:7.0", "cpu:skylake"], Exact), ["skylake-70", "arm-generic"]);
}

#[test]
fn exact_mode_refuses_an_entry_with_a_strict_subset_of_the_features() {
    // The machine is skylake with a GPU; the only skylake build was made for skylake without one. Exact mode asks
    // for the very feature set, so the generic build is due, not the skylake one.
    let bytes = serde_json::to_vec(&json!({"manifests": [
        entry("generic", "amd64", &[]), entry("skylake", "amd64", &["cpu:skylake"])]}))
    .unwrap();
    for features in [vec!["cpu:skylake", "nvcap:7.0"], vec!["nvcap:7.0", "cpu:skylake"]] {
        let machine =
            MachineType::new("m", features.iter().map(|s| s.to_string()).collect(), MatchMode::Exact).unwrap();
        let out = filter(&bytes, OCI_INDEX, &machine).unwrap();
        let v: Value = serde_json::from_slice(&out.bytes).unwrap();
        let digests: Vec<&str> =
            v["manifests"].as_array().unwrap().iter().map(|e| e["digest"].as_str().unwrap()).collect();
        assert_eq!(digests, ["generic"], "{features:?}");
    }
    // and the same entry is served in exact mode to the machine whose features it names
    let skylake = MachineType::new("m", vec!["cpu:skylake".into()], MatchMode::Exact).unwrap();
    assert!(String::from_utf8_lossy(&filter(&bytes, OCI_INDEX, &skylake).unwrap().bytes).contains("\"skylake\""));
}

#[test]
fn unknown_fields_survive_and_output_is_deterministic() {
    let machine = MachineType::new("m", vec!["cpu:skylake".into()], MatchMode::Best).unwrap();
    let a = filter(&index(), OCI_INDEX, &machine).unwrap();
    let b = filter(&index(), OCI_INDEX, &machine).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.digest, Digest::sha256_of(&a.bytes));
    let v: Value = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(v["x-unknown"], json!({"kept": true}));
    assert_eq!(v["annotations"]["org.opencontainers.image.created"], "2026-01-01");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["schemaVersion", "mediaType", "manifests", "annotations", "x-unknown"]);
    // Filtering the output again changes nothing.
    assert_eq!(filter(&a.bytes, OCI_INDEX, &machine).unwrap().bytes, a.bytes);
}

#[test]
fn nothing_fits_names_machine_and_offer() {
    let bytes = serde_json::to_vec(&json!({"manifests": [entry("s", "amd64", &["cpu:skylake"])]})).unwrap();
    let zen2 = MachineType::new("zen2-box", vec!["cpu:zen2".into()], MatchMode::Best).unwrap();
    let err = filter(&bytes, OCI_INDEX, &zen2).unwrap_err();
    assert_eq!(err.code, crate::ErrorCode::ManifestUnknown);
    assert!(err.message.contains("machine type \"zen2-box\" [cpu:zen2]"), "{}", err.message);
    assert!(err.message.contains("cpu:skylake"), "{}", err.message);
    assert_eq!(err.detail.unwrap()["machineType"], "zen2-box");
}

#[test]
fn garbage_is_an_upstream_error_not_a_panic() {
    let m = MachineType::new("m", vec![], MatchMode::Best).unwrap();
    for bad in [
        &b"not json"[..],
        b"[]",
        b"{}",
        br#"{"manifests": [{}]}"#,
        br#"{"manifests": [{"digest": "x", "platform": {"features": 3}}]}"#,
    ] {
        assert_eq!(filter(bad, OCI_INDEX, &m).unwrap_err().code, crate::ErrorCode::BadGateway);
    }
}

#[test]
fn explain_gives_reasons() {
    let machine = MachineType::new("m", vec!["cpu:zen2".into()], MatchMode::Best).unwrap();
    let bytes = index();
    let index = Index::parse(&bytes).unwrap();
    let verdicts = explain(&index, &machine);
    let skylake = verdicts.iter().find(|v| v.entry.digest == "skylake").unwrap();
    assert!(!skylake.fits && skylake.reason.contains("zen2"), "{}", skylake.reason);
    let generic = verdicts.iter().find(|v| v.entry.digest == "generic").unwrap();
    assert!(generic.fits && !generic.served);
}

fn levelled(digest: &str, arch: &str, variant: &str, features: &[&str]) -> Value {
    let mut e = entry(digest, arch, features);
    if !variant.is_empty() {
        e["platform"]["variant"] = json!(variant);
    }
    e
}

/// The index of issue 11, shaped as buildx publishes µarch builds.
fn levels_index() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            levelled("baseline", "amd64", "", &[]),
            levelled("v2", "amd64", "v2", &[]),
            levelled("v3", "amd64", "v3", &[]),
            levelled("v4", "amd64", "v4", &[]),
            levelled("v3-80", "amd64", "v3", &["nvcap:8.0"]),
            levelled("arm", "arm64", "v8", &[]),
        ]
    }))
    .unwrap()
}

fn served_entries(bytes: &[u8], features: &[&str], mode: MatchMode) -> Vec<Value> {
    let machine = MachineType::new("m", features.iter().map(|s| s.to_string()).collect(), mode).unwrap();
    let out = filter(bytes, OCI_INDEX, &machine).unwrap();
    let v: Value = serde_json::from_slice(&out.bytes).unwrap();
    v["manifests"].as_array().unwrap().clone()
}

fn amd64_served(bytes: &[u8], features: &[&str], mode: MatchMode) -> String {
    let amd64: Vec<String> = served_entries(bytes, features, mode)
        .iter()
        .filter(|e| e["platform"]["architecture"] == "amd64")
        .map(|e| e["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(amd64.len(), 1, "{features:?}: one amd64 entry, got {amd64:?}");
    amd64[0].clone()
}

#[test]
fn levels_issue_11_table() {
    let table: &[(&[&str], &str)] = &[
        (&["cpu:core2"], "baseline"),
        (&["cpu:nehalem"], "v2"),
        (&["cpu:haswell"], "v3"),
        (&["cpu:zen2"], "v3"),
        (&["cpu:icelake"], "v4"),
        (&["cpu:zen4"], "v4"),
        (&["cpu:x86_64_v3"], "v3"),
        (&["cpu:haswell", "nvcap:8.0"], "v3-80"),
        (&["cpu:skylake", "nvcap:7.0"], "v3"),
        // no cpu named: only the baseline is known to run
        (&[], "baseline"),
        (&["nvcap:8.0"], "baseline"),
    ];
    for (features, want) in table {
        assert_eq!(amd64_served(&levels_index(), features, MatchMode::Best), *want, "{features:?}");
    }
}

#[test]
fn levels_are_served_under_the_plain_platform() {
    let served = served_entries(&levels_index(), &["cpu:icelake"], MatchMode::Best);
    assert_eq!(served.len(), 2);
    // the chosen level build, with its variant dropped; the rest of the entry as the upstream wrote it
    assert_eq!(
        served[0],
        json!({"mediaType": OCI_MANIFEST, "digest": "v4", "size": 1,
        "platform": {"os": "linux", "architecture": "amd64"}})
    );
    // arm64/v8 is what every client already accepts: unchanged
    assert_eq!(served[1]["platform"], json!({"os": "linux", "architecture": "arm64", "variant": "v8"}));
}

#[test]
fn arm64_levels() {
    let bytes = serde_json::to_vec(&json!({"manifests": [
        levelled("amd64", "amd64", "", &[]),
        levelled("v8", "arm64", "v8", &[]),
        levelled("v8.2", "arm64", "v8.2", &[]),
        levelled("v8.4", "arm64", "v8.4", &[]),
        levelled("v9", "arm64", "v9", &[]),
        levelled("v8.7", "arm64", "v8.7", &[]),
    ]}))
    .unwrap();
    let arm64 = |features: &[&str]| -> String {
        let served = served_entries(&bytes, features, MatchMode::Best);
        let arm: Vec<&Value> = served.iter().filter(|e| e["platform"]["architecture"] == "arm64").collect();
        assert_eq!(arm.len(), 1, "{features:?}");
        arm[0]["digest"].as_str().unwrap().to_owned()
    };
    assert_eq!(arm64(&["cpu:neoverse_n1"]), "v8.2");
    assert_eq!(arm64(&["cpu:neoverse_v1"]), "v8.4");
    assert_eq!(arm64(&["cpu:neoverse_v2"]), "v9");
    assert_eq!(arm64(&["cpu:aarch64"]), "v8");
    assert_eq!(arm64(&["cpu:haswell"]), "v8"); // an amd64 machine keeps the arm64 group's generic entry
}

#[test]
fn arm32_variants_stay_platforms() {
    // archspec has no 32-bit arm levels: each variant is its own platform, for the clients to pick from
    let bytes = serde_json::to_vec(&json!({"manifests": [
        levelled("v6", "arm", "v6", &[]), levelled("v7", "arm", "v7", &[]), levelled("amd64", "amd64", "", &[])]}))
    .unwrap();
    let served: Vec<Value> = served_entries(&bytes, &["cpu:haswell"], MatchMode::Best);
    let digests: Vec<&str> = served.iter().map(|e| e["digest"].as_str().unwrap()).collect();
    assert_eq!(digests, ["v6", "v7", "amd64"]);
}

#[test]
fn exact_mode_never_serves_a_level_the_machine_cannot_run() {
    let bytes = serde_json::to_vec(&json!({"manifests": [
        levelled("baseline", "amd64", "", &[]),
        levelled("v4", "amd64", "v4", &[]),
        levelled("v3", "amd64", "v3", &[]),
        levelled("v4-hsw", "amd64", "v4", &["cpu:haswell"]),
        levelled("v3-hsw", "amd64", "v3", &["cpu:haswell"]),
    ]}))
    .unwrap();
    // haswell cannot run v4, even with its exact feature set; the exact entry beats the bare level
    assert_eq!(amd64_served(&bytes, &["cpu:haswell"], MatchMode::Exact), "v3-hsw");
    assert_eq!(amd64_served(&bytes, &["cpu:nehalem"], MatchMode::Exact), "baseline");
    assert_eq!(amd64_served(&bytes, &["cpu:zen2"], MatchMode::Exact), "v3");
    assert_eq!(amd64_served(&bytes, &["cpu:icelake"], MatchMode::Exact), "v4");
}

#[test]
fn explain_names_levels() {
    let bytes = levels_index();
    let index = Index::parse(&bytes).unwrap();
    let machine = MachineType::new("m", vec!["cpu:haswell".into()], MatchMode::Best).unwrap();
    let verdicts = explain(&index, &machine);
    let reason = |digest: &str| verdicts.iter().find(|v| v.entry.digest == digest).unwrap().reason.clone();
    assert_eq!(reason("v4"), "v4 needs x86_64_v4; haswell is x86_64_v3");
    assert_eq!(reason("v3"), "v3 needs x86_64_v3; haswell runs it");
    assert!(reason("v2").contains("more specific"), "{}", reason("v2"));
    assert_eq!(reason("v3-80"), "needs nvcap:8.0; the machine names no GPU");
    let plain = MachineType::new("m", vec![], MatchMode::Best).unwrap();
    let verdicts = explain(&index, &plain);
    assert_eq!(verdicts[1].reason, "v2 needs x86_64_v2; the machine names no cpu");
    assert_eq!(verdicts[1].entry.requirements(), ["v2 = x86_64_v2"]);
}

#[test]
fn nothing_dropped_is_served_verbatim() {
    // odd spacing: a re-serialization would change the digest
    let bytes = br#"{ "schemaVersion" : 2, "manifests" : [ {"digest": "a", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}} ] }"#;
    let machine = MachineType::new("m", vec!["cpu:haswell".into()], MatchMode::Best).unwrap();
    // the upstream's own digest (whatever its algorithm), not one computed here
    let upstream = Manifest {
        digest: Digest::sha256_of(b"as the upstream named it"),
        media_type: DOCKER_LIST.to_owned(),
        bytes: Bytes::from_static(bytes),
    };
    assert_eq!(filter_index(&upstream, &machine).unwrap(), upstream);
    // a level entry kept alone is rewritten to its plain platform: not verbatim
    let bytes =
        br#"{"manifests": [{"digest": "a", "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}}]}"#;
    let out = filter(bytes, OCI_INDEX, &machine).unwrap();
    assert_eq!(out.digest, Digest::sha256_of(&out.bytes));
    assert_eq!(out.bytes, &br#"{"manifests":[{"digest":"a","platform":{"os":"linux","architecture":"amd64"}}]}"#[..]);
}

/// Generated indexes of levels, cpus and nvcaps, for every machine: never an entry whose level or cpu the machine
/// cannot run; one image per (os, architecture); refiltering changes nothing. (The same property runs in
/// fuzz/fuzz_targets/filter.rs on arbitrary bytes.)
#[test]
fn property_never_serves_what_the_machine_cannot_run() {
    let variants = ["", "v1", "v2", "v3", "v4", "v5"];
    let arm_variants = ["", "v8", "v8.2", "v8.4", "v9", "v8.7"];
    let cpus = ["", "cpu:haswell", "cpu:x86_64_v2", "cpu:icelake", "cpu:zen2", "cpu:neoverse_v1", "cpu:core2"];
    let nvcaps = ["", "nvcap:7.0", "nvcap:8.0", "nvcap:8.6"];
    let machines: Vec<MachineType> = ["core2", "nehalem", "haswell", "zen2", "icelake", "zen4", "neoverse_n1"]
        .iter()
        .flat_map(|cpu| {
            [MatchMode::Best, MatchMode::Exact].into_iter().flat_map(move |mode| {
                [vec![format!("cpu:{cpu}")], vec![format!("cpu:{cpu}"), "nvcap:8.6".into()]]
                    .into_iter()
                    .map(move |f| MachineType::new("m", f, mode).unwrap())
            })
        })
        .collect();
    // a small deterministic generator (xorshift): 400 indexes of 1 to 12 entries
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..400 {
        let count = 1 + next(12);
        let manifests: Vec<Value> = (0..count)
            .map(|i| {
                let arm = next(4) == 0;
                let (arch, variant) = if arm { ("arm64", arm_variants[next(6)]) } else { ("amd64", variants[next(6)]) };
                let features: Vec<&str> = [cpus[next(cpus.len())], nvcaps[next(nvcaps.len())]]
                    .into_iter()
                    .filter(|f| !f.is_empty())
                    .collect();
                levelled(&format!("e{round}-{i}"), arch, variant, &features)
            })
            .collect();
        let bytes = serde_json::to_vec(&json!({"manifests": manifests})).unwrap();
        for machine in &machines {
            let Ok(out) = filter(&bytes, OCI_INDEX, machine) else { continue };
            let host = Host::of(machine);
            let served: Value = serde_json::from_slice(&out.bytes).unwrap();
            let mut groups = HashSet::new();
            for e in served["manifests"].as_array().unwrap() {
                let original = manifests.iter().find(|m| m["digest"] == e["digest"]).unwrap();
                let text = serde_json::to_string(&json!([original])).unwrap();
                let parsed = read_entries(&text).unwrap().1.remove(0);
                if let Level::Archspec(level) = parsed.level {
                    assert!(host.runs(level), "{:?} served {original} it cannot run", machine.features);
                }
                assert_ne!(parsed.level, Level::Unknown);
                for f in &parsed.features {
                    if let Some(cpu) = f.strip_prefix("cpu:") {
                        assert!(host.runs(cpu), "{:?} served {original} it cannot run", machine.features);
                    }
                }
                assert!(groups.insert(parsed.group().0.to_owned() + parsed.group().1), "two images of one group");
            }
            assert_eq!(filter(&out.bytes, OCI_INDEX, machine).unwrap().bytes, out.bytes, "idempotent");
        }
    }
}

/// The driver dimension: requirements read from the configs (by child digest) and `cuda:` entry features.
#[test]
fn cuda_builds_by_driver() {
    let bytes = serde_json::to_vec(&json!({"manifests": [
        entry("cpu", "amd64", &[]),
        entry("cu121", "amd64", &[]),
        entry("cu124", "amd64", &[]),
        entry("cu126-feature", "amd64", &["cuda:12.6"]),
        entry("arm64", "arm64", &[]),
    ]}))
    .unwrap();
    let upstream = Manifest { digest: Digest::sha256_of(&bytes), media_type: OCI_INDEX.into(), bytes: bytes.into() };
    let requirements: GpuRequirements =
        [("cu121", "cuda>=12.1"), ("cu124", "cuda>=12.4 brand=tesla,driver>=535,driver<536")]
            .into_iter()
            .map(|(d, r)| (d.to_owned(), std::sync::Arc::new(Requirements { expressions: vec![r.to_owned()] })))
            .collect();
    let served = |features: &[&str], mode| -> Vec<String> {
        let machine = MachineType::new("m", features.iter().map(|f| f.to_string()).collect(), mode).unwrap();
        let out = filter_index_gpu(&upstream, &machine, &requirements).unwrap();
        Index::parse(&out.bytes).unwrap().entries.into_iter().map(|e| e.digest).collect()
    };
    assert_eq!(served(&[], MatchMode::Best), ["cpu", "arm64"]);
    assert_eq!(served(&["cuda:12.2"], MatchMode::Best), ["cu121", "arm64"]);
    assert_eq!(served(&["cuda:12.2", "driver:535.183.01", "gpu-brand:tesla"], MatchMode::Best), ["cu124", "arm64"]);
    assert_eq!(served(&["cuda:12.6"], MatchMode::Best), ["cu126-feature", "arm64"], "the feature outranks by count");
    assert_eq!(served(&["cuda:12.4"], MatchMode::Best), ["cu124", "arm64"]);
    // without the map (filter_index), no config requirement is known: only the cuda: feature applies
    let machine = MachineType::new("m", vec![], MatchMode::Best).unwrap();
    let plain = filter_index(&upstream, &machine).unwrap();
    assert_eq!(Index::parse(&plain.bytes).unwrap().entries.len(), 2);
    // nothing runnable: the 404 names the NVIDIA requirements on offer
    let only_cuda = serde_json::to_vec(&json!({"manifests": [entry("cu124", "amd64", &[])]})).unwrap();
    let only_cuda =
        Manifest { digest: Digest::sha256_of(&only_cuda), media_type: OCI_INDEX.into(), bytes: only_cuda.into() };
    let e = filter_index_gpu(&only_cuda, &machine, &requirements).unwrap_err();
    assert!(e.message.contains("NVIDIA_REQUIRE_CUDA: cuda>=12.4"), "{}", e.message);
    // explain's reason
    let verdicts = explain_gpu(&Index::parse(&upstream.bytes).unwrap(), &machine, &requirements);
    assert_eq!(verdicts[1].reason, "needs cuda>=12.1; the machine type names no GPU driver (cuda:, driver:)");
}
