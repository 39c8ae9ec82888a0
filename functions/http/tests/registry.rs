//! The pull path through the router (`tower::ServiceExt::oneshot`), over the in-memory store and the scripted
//! upstream of `metahub_core::testing`: the headers and status of every answer a client relies on.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use metahub_core::cache::CacheOptions;
use metahub_core::filter::{OCI_INDEX, OCI_MANIFEST};
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::ports::Store;
use metahub_core::reference::Digest;
use metahub_core::service::RegistryService;
use metahub_core::testing::{FAKE_STORAGE, FakeUpstream, MemoryStore};
use metahub_core::token::TokenKeys;
use metahub_http::{App, HttpConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

const SKYLAKE: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GENERIC: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const IMAGE: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

struct Pull {
    app: Arc<App>,
    upstream: Arc<FakeUpstream>,
    token: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// `org/app:latest` is an index with a skylake build and a generic one; `org/app:single` an image manifest.
/// Anonymous pulls are granted machine type `skl` (cpu:skylake).
async fn setup() -> Pull {
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": SKYLAKE, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64", "features": ["cpu:skylake"]}},
        {"mediaType": OCI_MANIFEST, "digest": GENERIC, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "c".repeat(64)), "size": 1,
         "platform": {"os": "linux", "architecture": "amd64", "features": ["cpu:zen3"]}},
    ]});
    let upstream = Arc::new(FakeUpstream::default());
    upstream.tag("org/app", "latest", OCI_INDEX, index.to_string());
    upstream.tag("org/app", "single", OCI_MANIFEST, IMAGE);
    let store = Arc::new(MemoryStore::default());
    let skl = MachineType::new("skl", vec!["cpu:skylake".into()], MatchMode::Best).unwrap();
    store.put_machine_type(&skl).await.unwrap();
    let registry = RegistryService::new(store, upstream.clone(), CacheOptions::default());
    let config = HttpConfig {
        public_url: "http://127.0.0.1:5000".into(),
        service: "metahub".into(),
        anonymous_machine_type: Some("skl".parse().unwrap()),
        origin_secret: None,
    };
    let app = App::new(registry, TokenKeys::new(&[9u8; 32], "metahub", 300).unwrap(), config);
    let mut pull = Pull { app, upstream, token: String::new() };
    let answer = pull.send("GET", "/token?service=metahub&scope=repository:org/app:pull", false).await;
    assert_eq!(answer.status, StatusCode::OK);
    pull.token = answer.json()["token"].as_str().unwrap().to_owned();
    pull
}

impl Pull {
    async fn send(&self, method: &str, path: &str, authenticated: bool) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if authenticated {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let response = metahub_http::router(self.app.clone()).oneshot(request.body(Body::empty()).unwrap()).await;
        let response = response.unwrap();
        let (parts, body) = response.into_parts();
        Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, true).await
    }
}

#[tokio::test]
async fn ping_challenges_without_a_token() {
    let pull = setup().await;
    let anonymous = pull.send("GET", "/v2/", false).await;
    assert_eq!((anonymous.status, anonymous.code().as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
    assert_eq!(anonymous.header("www-authenticate"), r#"Bearer realm="http://127.0.0.1:5000/token",service="metahub""#);
    let ping = pull.get("/v2/").await;
    assert_eq!((ping.status, ping.json()), (StatusCode::OK, json!({})));
    assert_eq!(ping.header("docker-distribution-api-version"), "registry/2.0");
}

#[tokio::test]
async fn a_tag_is_the_index_filtered_for_the_machine_type() {
    let pull = setup().await;
    let got = pull.get("/v2/org/app/manifests/latest").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-type"), OCI_INDEX);
    let digest = Digest::sha256_of(&got.body);
    assert_eq!(got.header("docker-content-digest"), digest.as_str(), "the digest of the exact bytes");
    assert_eq!(got.header("etag"), format!("\"{digest}\""));
    let served: Vec<String> =
        got.json()["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().into()).collect();
    assert_eq!(served, [SKYLAKE], "the skylake build only");

    // HEAD: the same headers, no body.
    let head = pull.send("HEAD", "/v2/org/app/manifests/latest", true).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    for name in ["content-type", "docker-content-digest", "etag"] {
        assert_eq!(head.header(name), got.header(name), "{name}");
    }
    assert_eq!(head.header("content-length"), got.body.len().to_string());

    // By its own digest (containerd's follow-up), the same bytes.
    let by_digest = pull.get(&format!("/v2/org/app/manifests/{digest}")).await;
    assert_eq!((by_digest.status, &by_digest.body), (StatusCode::OK, &got.body));
    assert_eq!(by_digest.header("docker-content-digest"), digest.as_str());
}

#[tokio::test]
async fn a_single_manifest_and_upstream_digests_pass_through() {
    let pull = setup().await;
    let single = pull.get("/v2/org/app/manifests/single").await;
    assert_eq!((single.status, &single.body[..]), (StatusCode::OK, IMAGE.as_bytes()));
    assert_eq!(single.header("docker-content-digest"), Digest::sha256_of(IMAGE.as_bytes()).as_str());
    let upstream_index = pull.upstream.tag("org/app", "pinned", OCI_INDEX, r#"{"schemaVersion":2,"manifests":[]}"#);
    let verbatim = pull.get(&format!("/v2/org/app/manifests/{}", upstream_index.digest)).await;
    assert_eq!((verbatim.status, verbatim.body), (StatusCode::OK, upstream_index.bytes));
}

#[tokio::test]
async fn blobs_redirect_to_storage() {
    let pull = setup().await;
    let blob = pull.upstream.blob(b"layer");
    for method in ["GET", "HEAD"] {
        let answer = pull.send(method, &format!("/v2/org/app/blobs/{blob}"), true).await;
        assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT, "{method}");
        assert_eq!(answer.header("location"), format!("{FAKE_STORAGE}/org/app/{blob}"));
        assert_eq!(answer.header("docker-content-digest"), blob.as_str());
    }
}

#[tokio::test]
async fn errors_are_registry_json_with_the_right_status() {
    let pull = setup().await;
    let absent_blob = Digest::sha256_of(b"absent");
    let cases = [
        ("GET", "/v2/org/app/manifests/nope".to_owned(), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/org/app/manifests/-bad-".to_owned(), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("GET", format!("/v2/org/app/manifests/{absent_blob}"), StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        ("GET", format!("/v2/org/app/blobs/{absent_blob}"), StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        ("GET", "/v2/org/app/blobs/sha256:abc".to_owned(), StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
        ("GET", "/v2/Org/App/manifests/latest".to_owned(), StatusCode::BAD_REQUEST, "NAME_INVALID"),
        ("PUT", "/v2/org/app/manifests/latest".to_owned(), StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        ("POST", "/v2/org/app/blobs/uploads/".to_owned(), StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        ("GET", "/v2/_catalog".to_owned(), StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
        ("GET", "/v2/org/app/nothing/here".to_owned(), StatusCode::NOT_FOUND, "NOT_FOUND"),
        ("GET", "/v2/other/app/manifests/latest".to_owned(), StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
    ];
    for (method, path, status, code) in cases {
        let answer = pull.send(method, &path, true).await;
        assert_eq!((answer.status, answer.code().as_str()), (status, code), "{method} {path}: {:?}", answer.json());
    }
    let unauthenticated = pull.send("GET", "/v2/org/app/manifests/latest", false).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(pull.upstream.heads(), 1, "only the unknown tag reached the upstream");

    pull.upstream.set_down(true);
    let down = pull.get("/v2/org/app/manifests/latest").await;
    assert_eq!((down.status, down.code().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"));
}

#[tokio::test]
async fn referrers_are_an_oci_index_even_when_there_are_none() {
    let pull = setup().await;
    let signature = "application/vnd.dev.cosign.artifact.sig.v1+json";
    let referrer = json!({"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(b"sig").as_str(), "size": 3,
                          "artifactType": signature});
    let listed = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [referrer]});
    pull.upstream.tag("org/app", &SKYLAKE.replacen(':', "-", 1), OCI_INDEX, listed.to_string());
    let empty = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
    // (path, manifests, OCI-Filters-Applied): the upstream has no referrers API, only the tag scheme for SKYLAKE
    let cases = [
        (format!("/v2/org/app/referrers/{SKYLAKE}"), listed.clone(), ""),
        (
            format!("/v2/org/app/referrers/{SKYLAKE}?artifactType={}", signature.replace('+', "%2B")),
            listed,
            "artifactType",
        ),
        (format!("/v2/org/app/referrers/{SKYLAKE}?artifactType=application%2Fx-none"), empty.clone(), "artifactType"),
        (format!("/v2/org/app/referrers/{GENERIC}"), empty.clone(), ""),
        (format!("/v2/org/app/referrers/{}", Digest::sha256_of(b"no such manifest")), empty.clone(), ""),
        (format!("/v2/org/app/referrers/{GENERIC}?artifactType=a%2Fb"), empty, "artifactType"),
    ];
    for (path, manifests, filters) in cases {
        let answer = pull.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {:?}", answer.json());
        assert_eq!(answer.header("content-type"), OCI_INDEX, "{path}");
        assert_eq!(answer.json(), manifests, "{path}");
        assert_eq!(answer.header("oci-filters-applied"), filters, "{path}");
    }
    for malformed in ["sha256:abc", "latest", "md5:d41d8cd98f00b204e9800998ecf8427e"] {
        let answer = pull.get(&format!("/v2/org/app/referrers/{malformed}")).await;
        assert_eq!((answer.status, answer.code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"), "{malformed}");
    }
}
