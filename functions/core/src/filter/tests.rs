//! The matcher as tables: (machine features, mode) → the digests served.

use super::*;
use serde_json::json;

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
    let out = filter_index(&index(), OCI_INDEX, &machine).unwrap();
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
    let out = filter_index(&bytes, OCI_INDEX, &zen2).unwrap();
    assert!(String::from_utf8(out.bytes).unwrap().contains("\"generic\""));
}

#[test]
fn exact_mode_table() {
    use MatchMode::Exact;
    assert_eq!(served(&["cpu:skylake"], Exact), ["skylake", "arm-generic", "att-skylake"]);
    assert_eq!(served(&["cpu:cascadelake"], Exact), ["generic", "arm-generic"]);
    assert_eq!(served(&["nvcap:7.0", "cpu:skylake"], Exact), ["skylake-70", "arm-generic"]);
}

#[test]
fn unknown_fields_survive_and_output_is_deterministic() {
    let machine = MachineType::new("m", vec!["cpu:skylake".into()], MatchMode::Best).unwrap();
    let a = filter_index(&index(), OCI_INDEX, &machine).unwrap();
    let b = filter_index(&index(), OCI_INDEX, &machine).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.digest, Digest::sha256_of(&a.bytes));
    let v: Value = serde_json::from_slice(&a.bytes).unwrap();
    assert_eq!(v["x-unknown"], json!({"kept": true}));
    assert_eq!(v["annotations"]["org.opencontainers.image.created"], "2026-01-01");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["schemaVersion", "mediaType", "manifests", "annotations", "x-unknown"]);
    // Filtering the output again changes nothing.
    assert_eq!(filter_index(&a.bytes, OCI_INDEX, &machine).unwrap().bytes, a.bytes);
}

#[test]
fn nothing_fits_names_machine_and_offer() {
    let bytes = serde_json::to_vec(&json!({"manifests": [entry("s", "amd64", &["cpu:skylake"])]})).unwrap();
    let zen2 = MachineType::new("zen2-box", vec!["cpu:zen2".into()], MatchMode::Best).unwrap();
    let err = filter_index(&bytes, OCI_INDEX, &zen2).unwrap_err();
    assert_eq!(err.code, crate::ErrorCode::ManifestUnknown);
    assert!(err.message.contains("zen2-box") && err.message.contains("cpu:skylake"), "{}", err.message);
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
        assert_eq!(filter_index(bad, OCI_INDEX, &m).unwrap_err().code, crate::ErrorCode::BadGateway);
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
