//! Filtering cost per index size: `cargo bench -p metahub-core --bench filter`.
//!
//! The indexes look like real multi-µarch builds: per entry a cpu from the x86 and arm DAGs or an amd64 level
//! variant (`v2`…`v4`), some with an nvcap, a generic fallback per platform, and an attestation for every fourth
//! image. Sizes go to 16k entries (≈ 4 MiB): time per entry must stay flat (filtering is one pass), and the
//! `4MiB` bench is the index size the 50 ms budget is stated for. The machine type is a
//! cascadelake host with an sm_86 GPU in `best` mode (the most work: DAG walks and nvcap compares for every entry).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use metahub_core::filter::{self, Index, OCI_INDEX, OCI_MANIFEST};
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::ports::Manifest;
use metahub_core::reference::Digest;
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Duration;

const AMD64_CPUS: &[&str] = &[
    "x86_64_v2",
    "x86_64_v3",
    "x86_64_v4",
    "haswell",
    "broadwell",
    "skylake",
    "skylake_avx512",
    "cascadelake",
    "icelake",
    "sapphirerapids",
    "zen",
    "zen2",
    "zen3",
    "zen4",
];
const ARM64_CPUS: &[&str] = &["neoverse_n1", "neoverse_v1", "neoverse_v2", "a64fx"];
const NVCAPS: &[&str] = &["nvcap:5.2", "nvcap:6.0", "nvcap:7.0", "nvcap:7.5", "nvcap:8.0", "nvcap:8.6", "nvcap:9.0"];

fn digest(i: usize) -> String {
    Digest::sha256_of(format!("image-{i}").as_bytes()).to_string()
}

/// An OCI index of exactly `n` entries (images and attestations), deterministic for a given `n`.
pub fn index_of(n: usize) -> Vec<u8> {
    let mut manifests: Vec<Value> = Vec::with_capacity(n);
    let mut i = 0;
    while manifests.len() < n {
        let (arch, variant, features): (&str, Option<&str>, Vec<&str>) = match i {
            0 => ("amd64", None, vec![]),
            1 => ("arm64", Some("v8"), vec![]),
            _ if i % 5 == 4 => ("arm64", Some("v8"), vec![ARM64_CPUS[i % ARM64_CPUS.len()]]),
            _ if i % 7 == 5 => ("amd64", Some(["v2", "v3", "v4"][i % 3]), vec![]),
            _ => {
                let cpu = AMD64_CPUS[i % AMD64_CPUS.len()];
                if i % 3 == 0 {
                    ("amd64", None, vec![cpu, NVCAPS[(i / 3) % NVCAPS.len()]])
                } else {
                    ("amd64", None, vec![cpu])
                }
            }
        };
        let features: Vec<String> = features
            .into_iter()
            .map(|f| if f.starts_with("nvcap:") { f.to_owned() } else { format!("cpu:{f}") })
            .collect();
        let mut platform = json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        if !features.is_empty() {
            platform["features"] = json!(features);
        }
        manifests.push(json!({"mediaType": OCI_MANIFEST, "digest": digest(i), "size": 1234, "platform": platform}));
        if i % 4 == 2 && manifests.len() < n {
            manifests.push(json!({"mediaType": OCI_MANIFEST, "digest": digest(100_000 + i), "size": 840,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digest(i)}}));
        }
        i += 1;
    }
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    }))
    .expect("a json! value serializes")
}

fn machine(mode: MatchMode) -> MachineType {
    MachineType::new("cascadelake-a100", vec!["cpu:cascadelake".into(), "nvcap:8.6".into()], mode)
        .expect("valid machine type")
}

/// `bytes` as the upstream serves them.
fn upstream(bytes: &[u8]) -> Manifest {
    Manifest { digest: Digest::sha256_of(bytes), media_type: OCI_INDEX.to_owned(), bytes: bytes.to_vec().into() }
}

fn bench_filter(c: &mut Criterion) {
    let best = machine(MatchMode::Best);
    let exact = machine(MatchMode::Exact);
    let mut group = c.benchmark_group("filter_index");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    for n in [8usize, 64, 512, 2048, 4096, 8192, 16384] {
        let bytes = index_of(n);
        let index = upstream(&bytes);
        // Sanity: the bench measures a successful filtering, not an error path.
        let out = filter::filter_index(&index, &best).expect("the bench index has a fitting entry");
        assert!(out.bytes.len() < bytes.len());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("best", n), &index, |b, index| {
            b.iter(|| filter::filter_index(black_box(index), black_box(&best)))
        });
        group.bench_with_input(BenchmarkId::new("exact", n), &index, |b, index| {
            b.iter(|| filter::filter_index(black_box(index), black_box(&exact)))
        });
        // Where the time goes: parsing alone, and matching on an already parsed index.
        group.bench_with_input(BenchmarkId::new("parse_only", n), &bytes, |b, bytes| {
            b.iter(|| Index::parse(black_box(bytes)))
        });
        let parsed = Index::parse(&bytes).expect("parses");
        group.bench_with_input(BenchmarkId::new("explain_only", n), &parsed, |b, parsed| {
            b.iter(|| filter::explain(black_box(parsed), black_box(&best)))
        });
    }
    group.finish();

    // The budget of issue 14: a 4 MiB index filtered within 50 ms in release.
    let mut n = 1024;
    let mut bytes = index_of(n);
    while bytes.len() < 4 << 20 {
        n += n / 4;
        bytes = index_of(n);
    }
    let mut group = c.benchmark_group("filter_index_4MiB");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("best", format!("{n}_entries_{}_bytes", bytes.len())),
        &upstream(&bytes),
        |b, index| b.iter(|| filter::filter_index(black_box(index), black_box(&best))),
    );
    group.finish();
}

criterion_group!(benches, bench_filter);
criterion_main!(benches);
