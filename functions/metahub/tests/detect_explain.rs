//! `metahub detect` on recorded /proc/cpuinfo and nvidia-smi samples (tests/data/), and `metahub explain` against a
//! tiny in-process registry on 127.0.0.1. Everything runs the real binary.

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metahub_core::reference::Digest;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_metahub");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// A fresh directory under the system temp dir (removed by the OS; tests never share one).
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "metahub-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn metahub(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("METAHUB_STORE").env_remove("METAHUB_UPSTREAM").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn detect(cpuinfo: &str, extra: &[&str]) -> Output {
    let path = data(cpuinfo);
    let mut args = vec!["detect", "--cpuinfo", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    // An empty PATH: no nvidia-smi, whatever the machine running the tests has.
    metahub(&args, &[("PATH", "")])
}

// ---------------------------------------------------------------------------------------------
// detect

#[test]
fn detect_names_each_recorded_cpu() {
    for (file, cpu) in [
        ("cpuinfo-skylake-i7-6700", "skylake"),
        ("cpuinfo-skylake_avx512-xeon-gold-6148", "skylake_avx512"),
        ("cpuinfo-cascadelake-xeon-gold-6248", "cascadelake"),
        ("cpuinfo-zen2-epyc-7742", "zen2"),
        ("cpuinfo-zen3-ryzen-5950x", "zen3"),
        // Hyper-V hides pku from this Zen 3 EPYC, and archspec's zen3 needs it: the guest can only claim zen2.
        ("cpuinfo-zen2-epyc-7763-hyperv", "zen2"),
        ("cpuinfo-neoverse_n1-graviton2", "neoverse_n1"),
        ("cpuinfo-neoverse_v1-graviton3", "neoverse_v1"),
    ] {
        let out = ok(&detect(file, &[]));
        assert_eq!(out, format!("cpu:{cpu}\nmetahub machine-type put {cpu} --feature cpu:{cpu}\n"), "{file}");
    }
}

#[test]
fn detect_takes_the_lowest_gpu_capability() {
    let smi = data("nvidia-smi-8.6-8.0");
    let out = detect("cpuinfo-cascadelake-xeon-gold-6248", &["--nvidia-smi-output", smi.to_str().unwrap()]);
    assert_eq!(
        ok(&out),
        "cpu:cascadelake\nnvcap:8.0\nmetahub machine-type put cascadelake-nvcap8.0 --feature cpu:cascadelake --feature nvcap:8.0\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("8.6, 8.0") && stderr.contains("lowest"), "{stderr}");
    assert!(stderr.contains("Xeon(R) Gold 6248"), "{stderr}");
}

#[test]
fn detect_json_and_name() {
    let smi = data("nvidia-smi-v100x4");
    let out = ok(&detect(
        "cpuinfo-skylake_avx512-xeon-gold-6148",
        &["--json", "--name", "p3-v100", "--nvidia-smi-output", smi.to_str().unwrap()],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "p3-v100");
    assert_eq!(v["cpu"], "skylake_avx512");
    assert_eq!(v["nvcap"], "7.0");
    assert_eq!(v["gpus"], json!(["7.0", "7.0", "7.0", "7.0"]));
    assert_eq!(v["features"], json!(["cpu:skylake_avx512", "nvcap:7.0"]));
    assert_eq!(v["command"], "metahub machine-type put p3-v100 --feature cpu:skylake_avx512 --feature nvcap:7.0");

    let bad = detect("cpuinfo-zen2-epyc-7742", &["--name", "has space"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has space"));
}

#[test]
fn detect_refuses_what_it_cannot_read() {
    let dir = temp_dir("detect");
    let ppc = dir.join("cpuinfo-power9");
    std::fs::write(&ppc, "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n").unwrap();
    let out = metahub(&["detect", "--cpuinfo", ppc.to_str().unwrap()], &[("PATH", "")]);
    assert!(!out.status.success());
    let missing = metahub(&["detect", "--cpuinfo", "/nonexistent/cpuinfo"], &[]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/cpuinfo"));
    // Garbage from nvidia-smi leaves the GPU out rather than inventing a capability.
    let smi = dir.join("smi");
    std::fs::write(&smi, "[N/A]\n").unwrap();
    let out = ok(&detect("cpuinfo-zen2-epyc-7742", &["--nvidia-smi-output", smi.to_str().unwrap()]));
    assert_eq!(out, "cpu:zen2\nmetahub machine-type put zen2 --feature cpu:zen2\n");
}

#[cfg(unix)]
#[test]
fn detect_runs_nvidia_smi_from_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("smi");
    let script = |body: &str| {
        let p = dir.join("nvidia-smi");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let cpuinfo = data("cpuinfo-neoverse_v1-graviton3");
    let run = || {
        // A script just written can be ETXTBSY for a moment while another test thread forks: retry then.
        let mut out = metahub(&["detect", "--cpuinfo", cpuinfo.to_str().unwrap()], &[("PATH", dir.to_str().unwrap())]);
        for _ in 0..20 {
            if !String::from_utf8_lossy(&out.stderr).contains("could not run") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            out = metahub(&["detect", "--cpuinfo", cpuinfo.to_str().unwrap()], &[("PATH", dir.to_str().unwrap())]);
        }
        out
    };

    script(
        r#"[ "$1" = "--query-gpu=compute_cap" ] && [ "$2" = "--format=csv,noheader" ] || exit 3; printf '9.0\n9.0\n'"#,
    );
    assert_eq!(
        ok(&run()),
        "cpu:neoverse_v1\nnvcap:9.0\nmetahub machine-type put neoverse_v1-nvcap9.0 --feature cpu:neoverse_v1 --feature nvcap:9.0\n"
    );

    // A driver that fails (or is too old for compute_cap): no nvcap, and a note says why.
    script("echo 'NVIDIA-SMI has failed' >&2; exit 9");
    let out = run();
    assert_eq!(ok(&out), "cpu:neoverse_v1\nmetahub machine-type put neoverse_v1 --feature cpu:neoverse_v1\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nvidia-smi failed"));
}

// ---------------------------------------------------------------------------------------------
// explain, against a registry of two manifests served from memory

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn fake_digest(name: &str) -> String {
    Digest::sha256_of(name.as_bytes()).to_string()
}

fn entry(name: &str, arch: &str, features: &[&str]) -> Value {
    let mut platform = json!({"architecture": arch, "os": "linux"});
    if !features.is_empty() {
        platform["features"] = json!(features);
    }
    json!({"mediaType": OCI_MANIFEST, "digest": fake_digest(name), "size": 100, "platform": platform})
}

fn app_index() -> Vec<u8> {
    let manifests = vec![
        entry("generic", "amd64", &[]),
        entry("broadwell", "amd64", &["cpu:broadwell"]),
        entry("skylake", "amd64", &["cpu:skylake"]),
        entry("skylake-v100", "amd64", &["cpu:skylake", "nvcap:7.0"]),
        entry("zen3", "amd64", &["cpu:zen3"]),
        entry("arm64", "arm64", &[]),
        json!({
            "mediaType": OCI_MANIFEST, "digest": fake_digest("attestation"), "size": 10,
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.digest": fake_digest("skylake"), "vnd.docker.reference.type": "attestation-manifest"},
        }),
    ];
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap()
}

fn single_manifest() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": fake_digest("config"), "size": 2},
        "layers": [],
    }))
    .unwrap()
}

/// Serves `/v2/`, `org/app` (an index) and `org/single` (a manifest), by tag and by digest; everything else 404.
async fn start_registry() -> String {
    let manifests: Arc<Vec<(&'static str, &'static str, Vec<u8>)>> =
        Arc::new(vec![("org/app", OCI_INDEX, app_index()), ("org/single", OCI_MANIFEST, single_manifest())]);
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let manifests = manifests.clone();
        async move {
            let path = req.uri().path();
            if path == "/v2/" {
                return (StatusCode::OK, "{}").into_response();
            }
            for (repo, media_type, bytes) in manifests.iter() {
                let digest = Digest::sha256_of(bytes).to_string();
                let Some(reference) = path.strip_prefix(&format!("/v2/{repo}/manifests/")) else { continue };
                if reference == "latest" || reference == digest {
                    let mut resp = Response::new(Body::from(bytes.clone()));
                    let h = resp.headers_mut();
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
                    h.insert("docker-content-digest", HeaderValue::from_str(&digest).unwrap());
                    return resp;
                }
            }
            let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":null}]}"#;
            (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn metahub_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        metahub(&refs, &[])
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_shows_every_entry_and_the_one_served() {
    let upstream = start_registry().await;
    let store = format!("file:{}", temp_dir("explain").join("store.redb").display());
    ok(&metahub_async(args(&["machine-type", "put", "sky", "--feature", "cpu:cascadelake", "--store", &store])).await);
    ok(&metahub_async(args(&["machine-type", "put", "zen", "--feature", "cpu:zen2", "--store", &store])).await);

    let out = ok(&metahub_async(args(&[
        "explain",
        "sky",
        "org/app:latest",
        "--store",
        &store,
        "--upstream",
        &upstream,
        "--json",
    ]))
    .await);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["index"], true);
    assert_eq!(v["machineType"]["name"], "sky");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 7);
    let by = |name: &str| entries.iter().find(|e| e["digest"] == fake_digest(name)).unwrap().clone();
    assert_eq!((by("skylake")["fits"].clone(), by("skylake")["served"].clone()), (json!(true), json!(true)));
    assert_eq!((by("generic")["fits"].clone(), by("generic")["served"].clone()), (json!(true), json!(false)));
    assert_eq!(by("broadwell")["served"], false);
    assert_eq!(by("skylake-v100")["fits"], false);
    assert!(by("skylake-v100")["reason"].as_str().unwrap().contains("nvcap:7.0"));
    assert_eq!(by("zen3")["fits"], false);
    assert!(by("zen3")["reason"].as_str().unwrap().contains("cpu:cascadelake does not descend from it"));
    assert_eq!(by("arm64")["served"], true);
    assert_eq!(by("attestation")["served"], true);
    assert_eq!(v["served"], json!([fake_digest("skylake"), fake_digest("arm64"), fake_digest("attestation")]));
    assert!(v["filteredDigest"].as_str().unwrap().starts_with("sha256:"));

    // The table: a header, one row per entry with a 12-hex digest, and the summary.
    let out =
        ok(&metahub_async(args(&["explain", "zen", "org/app", "--store", &store, "--upstream", &upstream])).await);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("org/app:latest sha256:") && lines[0].contains(OCI_INDEX), "{out}");
    assert_eq!(lines[1], "machine type zen [cpu:zen2] (best)");
    assert!(lines[3].starts_with("DIGEST") && lines[3].contains("SERVED") && lines[3].contains("WHY"), "{out}");
    let generic_row = lines.iter().find(|l| l.starts_with(&fake_digest("generic")[..19])).unwrap();
    assert!(
        generic_row.contains("linux/amd64") && generic_row.contains(" yes   yes ") && generic_row.contains("generic"),
        "{generic_row}"
    );
    let zen3_row = lines.iter().find(|l| l.starts_with(&fake_digest("zen3")[..19])).unwrap();
    assert!(zen3_row.contains("cpu:zen3") && zen3_row.contains(" no "), "{zen3_row}");
    assert!(lines.last().unwrap().starts_with("served: 2 of 7 entries, as index sha256:"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_single_manifest_missing_type_and_missing_image() {
    let upstream = start_registry().await;
    let store = format!("file:{}", temp_dir("explain2").join("store.redb").display());
    ok(&metahub_async(args(&["machine-type", "put", "sky", "--feature", "cpu:skylake", "--store", &store])).await);

    let out =
        ok(&metahub_async(args(&["explain", "sky", "org/single:latest", "--store", &store, "--upstream", &upstream]))
            .await);
    assert!(out.contains("passes through verbatim"), "{out}");
    let out = ok(&metahub_async(args(&[
        "explain",
        "sky",
        "org/single",
        "--store",
        &store,
        "--upstream",
        &upstream,
        "--json",
    ]))
    .await);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["index"].clone(), v["passthrough"].clone()), (json!(false), json!(true)));
    assert_eq!(v["digest"], Digest::sha256_of(&single_manifest()).to_string());

    let out =
        metahub_async(args(&["explain", "nosuch", "org/app:latest", "--store", &store, "--upstream", &upstream])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no machine type \"nosuch\""), "{stderr}");

    let out =
        metahub_async(args(&["explain", "sky", "org/absent:latest", "--store", &store, "--upstream", &upstream])).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("org/absent:latest"));
}
