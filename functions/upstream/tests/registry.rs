//! Against a real `docker-registry serve` (distribution 2.8): manifests by tag and digest, blobs with and without
//! the storage redirect middleware, 404s, the size limit, prefix routing. Skipped when `docker-registry` is absent.

mod common;

use common::*;
use metahub_core::ErrorCode;
use metahub_core::ports::Upstream;
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_upstream::{ClientOptions, RegistryClient, UpstreamConfig, UpstreamRouter};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Registry {
    url: String,
    root: tempfile::TempDir,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain client for the test's own requests (reqwest needs the crypto provider MetaHub installs).
fn http() -> reqwest::Client {
    metahub_upstream::http_client_builder().build().unwrap()
}

fn have_registry() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("docker-registry").is_file()));
    if !found {
        eprintln!("NOTICE: docker-registry is not on PATH; skipping this test (apt-get install docker-registry)");
    }
    found
}

/// Starts `docker-registry serve` on a free port; `extra` is appended to the YAML config.
async fn start_registry(extra: &str) -> Registry {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
        root.path().join("data").display()
    );
    let config_path = root.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(root.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut registry = Registry { url, root, child };
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("{}/v2/", registry.url)).send().await
            && r.status().is_success()
        {
            return registry;
        }
        if let Ok(Some(status)) = registry.child.try_wait() {
            let log = std::fs::read_to_string(registry.root.path().join("registry.log")).unwrap_or_default();
            panic!("docker-registry exited with {status}: {log}");
        }
        assert!(Instant::now() < deadline, "docker-registry did not start in 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push_blob(http: &reqwest::Client, base: &str, name: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = http.post(format!("{base}/v2/{name}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202, "start upload");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut url = reqwest::Url::parse(base).unwrap().join(&location).unwrap();
    url.query_pairs_mut().append_pair("digest", &digest);
    let r = http.put(url).header("content-type", "application/octet-stream").body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201, "finish upload: {}", r.text().await.unwrap());
    digest
}

async fn push_manifest(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) {
    let r = http
        .put(format!("{base}/v2/{name}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push manifest: {}", r.text().await.unwrap());
}

struct Pushed {
    manifest: Vec<u8>,
    index: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: String,
}

/// Pushes a one-layer OCI image as `name:single` and an OCI index of it as `name:v1`.
async fn push_image(base: &str, name: &str) -> Pushed {
    let http = http();
    let layer = b"not really a tarball, but the registry does not care".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer_digest = push_blob(&http, base, name, &layer).await;
    let config_digest = push_blob(&http, base, name, &config).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    push_manifest(&http, base, name, "single", OCI_MANIFEST, &manifest).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": sha256(&manifest), "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux", "features": ["cpu:skylake"]},
        }],
    }))
    .unwrap();
    push_manifest(&http, base, name, "v1", OCI_INDEX, &index).await;
    Pushed { manifest, index, layer, layer_digest }
}

fn client(url: &str, options: ClientOptions) -> RegistryClient {
    RegistryClient::new(&UpstreamConfig::from_url(url).unwrap(), &options).unwrap()
}

fn name(s: &str) -> RepositoryName {
    s.parse().unwrap()
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

#[tokio::test]
async fn manifests_by_tag_and_by_digest() {
    if !have_registry() {
        return;
    }
    let reg = start_registry("").await;
    let pushed = push_image(&reg.url, "org/img").await;
    let c = client(&reg.url, ClientOptions::default());
    let n = name("org/img");
    let index_digest = sha256(&pushed.index);

    let head = c.head_manifest(&n, &reference("v1"), &accept_all()).await.unwrap();
    assert_eq!(head.digest.as_str(), index_digest);
    assert_eq!(head.media_type, OCI_INDEX);
    assert_eq!(head.size, pushed.index.len() as u64);

    let got = c.get_manifest(&n, &reference("v1"), &accept_all()).await.unwrap();
    assert_eq!(got.bytes.as_ref(), pushed.index.as_slice());
    assert_eq!(got.digest.as_str(), index_digest);
    assert_eq!(got.media_type, OCI_INDEX);

    let by_digest = c.get_manifest(&n, &reference(&index_digest), &accept_all()).await.unwrap();
    assert_eq!(by_digest, got);
    let head = c.head_manifest(&n, &reference(&index_digest), &accept_all()).await.unwrap();
    assert_eq!(head.digest.as_str(), index_digest);

    let single = c.get_manifest(&n, &reference("single"), &accept_all()).await.unwrap();
    assert_eq!(single.bytes.as_ref(), pushed.manifest.as_slice());
    assert_eq!(single.media_type, OCI_MANIFEST);
    let child = c.get_manifest(&n, &reference(&sha256(&pushed.manifest)), &accept_all()).await.unwrap();
    assert_eq!(child.digest.as_str(), sha256(&pushed.manifest));
}

#[tokio::test]
async fn unknown_manifests_blobs_and_names() {
    if !have_registry() {
        return;
    }
    let reg = start_registry("").await;
    push_image(&reg.url, "org/img").await;
    let c = client(&reg.url, ClientOptions::default());
    let n = name("org/img");
    let missing: Digest = sha256(b"nothing").parse().unwrap();

    let e = c.get_manifest(&n, &reference("nope"), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestUnknown, "{e}");
    let e = c.head_manifest(&n, &reference("nope"), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestUnknown, "{e}");
    let e = c.get_manifest(&n, &Reference::Digest(missing.clone()), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestUnknown, "{e}");
    let e = c.blob_location(&n, &missing).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BlobUnknown, "{e}");
    let e = c.get_manifest(&name("no/such-repo"), &reference("v1"), &accept_all()).await.unwrap_err();
    assert!(matches!(e.code, ErrorCode::NameUnknown | ErrorCode::ManifestUnknown), "{e}");
    assert_eq!(e.status(), 404);
}

#[tokio::test]
async fn manifest_size_limit() {
    if !have_registry() {
        return;
    }
    let reg = start_registry("").await;
    let pushed = push_image(&reg.url, "org/img").await;
    let small = ClientOptions { max_manifest_bytes: 64, ..ClientOptions::default() };
    let c = client(&reg.url, small);
    let e = c.get_manifest(&name("org/img"), &reference("v1"), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    assert!(e.message.contains("64 bytes"), "{e}");
    // Exactly at the limit is fine.
    let exact = ClientOptions { max_manifest_bytes: pushed.index.len(), ..ClientOptions::default() };
    let c = client(&reg.url, exact);
    assert!(c.get_manifest(&name("org/img"), &reference("v1"), &accept_all()).await.is_ok());
}

#[tokio::test]
async fn blob_location_is_the_upstream_blob_url_without_redirects() {
    if !have_registry() {
        return;
    }
    let reg = start_registry("").await;
    let pushed = push_image(&reg.url, "org/img").await;
    let c = client(&reg.url, ClientOptions::default());
    let d: Digest = pushed.layer_digest.parse().unwrap();
    let loc = c.blob_location(&name("org/img"), &d).await.unwrap();
    assert_eq!(loc.url, format!("{}/v2/org/img/blobs/{}", reg.url, pushed.layer_digest));
    let body = http().get(&loc.url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), pushed.layer.as_slice());
}

#[tokio::test]
async fn blob_location_follows_the_storage_redirect() {
    if !have_registry() {
        return;
    }
    // The storage middleware redirects blob GETs to baseurl + the storage path; a static server serves the root.
    let storage = tempfile::tempdir().unwrap();
    let root = storage.path().to_path_buf();
    let files = fake(move |_| {
        Arc::new(move |_, path: &str, _| {
            let rel = path.split('?').next().unwrap_or_default().trim_start_matches('/');
            if rel.split('/').any(|s| s == ".." || s.is_empty()) {
                return response(400, &[], "");
            }
            match std::fs::read(root.join(rel)) {
                Ok(b) => response(200, &[], b),
                Err(_) => response(404, &[], ""),
            }
        })
    })
    .await;
    let extra =
        format!("middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {}\n", files.url);
    let reg = start_registry(&extra).await;
    let pushed = push_image(&reg.url, "org/img").await;
    // The registry writes under its own root: point the static server at it by symlink.
    std::fs::remove_dir(storage.path()).unwrap();
    std::os::unix::fs::symlink(reg.root.path().join("data"), storage.path()).unwrap();

    let c = client(&reg.url, ClientOptions::default());
    let d: Digest = pushed.layer_digest.parse().unwrap();
    let loc = c.blob_location(&name("org/img"), &d).await.unwrap();
    assert!(loc.url.starts_with(&files.url), "{} should start with {}", loc.url, files.url);
    let body = http().get(&loc.url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), pushed.layer.as_slice());
    // Manifests still come from the registry itself.
    let m = c.get_manifest(&name("org/img"), &reference("v1"), &accept_all()).await.unwrap();
    assert_eq!(m.bytes.as_ref(), pushed.index.as_slice());
}

#[tokio::test]
async fn router_sends_prefixed_names_to_their_upstream() {
    if !have_registry() {
        return;
    }
    let reg = start_registry("").await;
    let pushed = push_image(&reg.url, "org/img").await;
    let configs = [UpstreamConfig::from_url(&reg.url).unwrap().with_prefix("local")];
    let router = UpstreamRouter::new(&configs, &ClientOptions::default()).unwrap();
    let m = router.get_manifest(&name("local/org/img"), &reference("v1"), &accept_all()).await.unwrap();
    assert_eq!(m.bytes.as_ref(), pushed.index.as_slice());
    let e = router.get_manifest(&name("org/img"), &reference("v1"), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NameUnknown, "{e}");
}
