//! Against fake upstreams on 127.0.0.1: the token flow and its cache, Basic challenges, realm SSRF refusal, digest
//! verification, and the mapping of failures (429, 5xx, garbage, closed ports, timeouts) onto the error table.

mod common;

use common::*;
use metahub_core::ErrorCode;
use metahub_core::ports::Upstream;
use metahub_core::reference::{Digest, Reference, RepositoryName};
use metahub_upstream::{ClientOptions, RegistryClient, UpstreamConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
const BLOB: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn client_for(url: &str, creds: Option<(&str, &str)>, options: ClientOptions) -> RegistryClient {
    let mut cfg = UpstreamConfig::from_url(url).unwrap();
    if let Some((u, p)) = creds {
        cfg = cfg.with_credentials(u, p);
    }
    RegistryClient::new(&cfg, &options).unwrap()
}

fn client(url: &str) -> RegistryClient {
    client_for(url, None, ClientOptions::default())
}

fn name() -> RepositoryName {
    "org/img".parse().unwrap()
}

fn tag() -> Reference {
    "v1".parse().unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    use base64_like::encode;
    format!("Basic {}", encode(format!("{user}:{pass}").as_bytes()))
}

/// A tiny standard base64 encoder, enough to check Basic headers in fakes.
mod base64_like {
    pub fn encode(input: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn manifest_response(method: &axum::http::Method, digest: &str) -> axum::http::Response<axum::body::Body> {
    let headers = [("content-type", OCI_MANIFEST), ("docker-content-digest", digest)];
    if method == axum::http::Method::HEAD {
        let len = MANIFEST.len().to_string();
        let mut r = response(200, &headers, "");
        r.headers_mut().insert("content-length", len.parse().unwrap());
        r
    } else {
        response(200, &headers, MANIFEST)
    }
}

/// A registry that wants `Bearer tok-N` tokens from its own /token endpoint, which counts its calls.
struct TokenFake {
    fake: Fake,
    token_calls: Arc<AtomicUsize>,
    token_queries: Arc<Mutex<Vec<String>>>,
}

async fn token_fake(require: Option<(&'static str, &'static str)>, expires_in: u64) -> TokenFake {
    let token_calls = Arc::new(AtomicUsize::new(0));
    let token_queries = Arc::new(Mutex::new(Vec::new()));
    let (calls, queries) = (token_calls.clone(), token_queries.clone());
    let fake = fake(move |base| {
        Arc::new(move |method, path: &str, headers| {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            if path.starts_with("/token") {
                if let Some((u, p)) = require
                    && auth != basic(u, p)
                {
                    return response(401, &[], r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad creds"}]}"#);
                }
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                queries.lock().unwrap().push(path.to_owned());
                return response(
                    200,
                    &[("content-type", "application/json")],
                    format!(r#"{{"token":"tok-{n}","expires_in":{expires_in}}}"#),
                );
            }
            let current = format!("Bearer tok-{}", calls.load(Ordering::SeqCst));
            if auth != current {
                let challenge =
                    format!(r#"Bearer realm="{base}/token",service="fake,registry",scope="repository:org/img:pull""#);
                return response(
                    401,
                    &[("www-authenticate", challenge.as_str())],
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                );
            }
            if path.starts_with("/v2/org/img/manifests/") {
                manifest_response(method, &sha256(MANIFEST))
            } else if path == format!("/v2/org/img/blobs/{BLOB}") {
                response(307, &[("location", "/storage/blob?sig=1")], "")
            } else {
                response(404, &[], r#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#)
            }
        })
    })
    .await;
    TokenFake { fake, token_calls, token_queries }
}

#[tokio::test]
async fn token_flow_caches_the_token_per_scope() {
    let t = token_fake(None, 300).await;
    let c = client(&t.fake.url);
    let m = c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    assert_eq!(m.digest.as_str(), sha256(MANIFEST));
    let h = c.head_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    assert_eq!(h.digest, m.digest);
    assert_eq!(h.size, MANIFEST.len() as u64);
    let blob: Digest = BLOB.parse().unwrap();
    let loc = c.blob_location(&name(), &blob).await.unwrap();
    assert_eq!(loc.url, format!("{}/storage/blob?sig=1", t.fake.url), "relative Location resolved");
    assert_eq!(t.token_calls.load(Ordering::SeqCst), 1, "one token for the whole session");
    // 1 challenge + 1 retry + HEAD + blob GET + 1 token request.
    assert_eq!(t.fake.requests(), 5);
    let q = t.token_queries.lock().unwrap()[0].clone();
    assert!(q.contains("service=fake%2Cregistry"), "{q}");
    assert!(q.contains("scope=repository%3Aorg%2Fimg%3Apull"), "{q}");
}

#[tokio::test]
async fn a_rejected_cached_token_is_renewed_once() {
    let t = token_fake(None, 300).await;
    let c = client(&t.fake.url);
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    // Another client takes tok-2: ours now holds a token the fake refuses.
    let other = client(&t.fake.url);
    other.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    assert_eq!(t.token_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn short_lived_tokens_are_not_reused_after_expiry() {
    let t = token_fake(None, 1).await;
    let c = client(&t.fake.url);
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    assert_eq!(t.token_calls.load(Ordering::SeqCst), 2);
    // The expired token was dropped, not sent (the fake would still have taken it).
    assert_eq!(t.fake.requests(), 6);
}

#[tokio::test]
async fn token_endpoint_gets_configured_credentials() {
    let t = token_fake(Some(("robot", "s3cret")), 300).await;
    let c = client_for(&t.fake.url, Some(("robot", "s3cret")), ClientOptions::default());
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();

    let wrong = client_for(&t.fake.url, Some(("robot", "wrong-pass")), ClientOptions::default());
    let e = wrong.get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    assert!(!e.message.contains(&t.fake.port.to_string()), "client-facing: never the upstream's host: {e}");
    assert!(!e.message.contains("wrong-pass") && !format!("{e:?}").contains("wrong-pass"));

    let anonymous = client(&t.fake.url);
    let e = anonymous.head_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
}

#[tokio::test]
async fn a_realm_on_another_host_is_refused_without_contacting_it() {
    let f = fake(|base| {
        // Same port, other host name: the client must not go there.
        let realm = base.replace("127.0.0.1", "localhost");
        Arc::new(move |_, _: &str, _| {
            let challenge = format!(r#"Bearer realm="{realm}/token",service="x""#);
            response(401, &[("www-authenticate", challenge.as_str())], "")
        })
    })
    .await;
    let e = client(&f.url).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    assert!(!e.message.contains("localhost") && !e.message.contains("127.0.0.1"), "{e}");
    assert_eq!(f.requests(), 1);
}

#[tokio::test]
async fn basic_challenges_get_the_configured_credentials() {
    let f = fake(|_| {
        Arc::new(move |method, _: &str, headers| {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(basic("u", "p").as_str()) {
                manifest_response(method, &sha256(MANIFEST))
            } else {
                response(401, &[("www-authenticate", r#"Basic realm="registry""#)], "")
            }
        })
    })
    .await;
    let c = client_for(&f.url, Some(("u", "p")), ClientOptions::default());
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    c.get_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    assert_eq!(f.requests(), 3, "credentials sent up front once Basic was asked for");
    let e = client(&f.url).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    let e = client_for(&f.url, Some(("u", "nope")), ClientOptions::default())
        .get_manifest(&name(), &tag(), &accept_all())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    assert!(!e.message.contains("nope"));
}

#[tokio::test]
async fn all_accept_values_are_forwarded() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let f = fake(move |_| {
        Arc::new(move |method, _: &str, headers| {
            let all: Vec<String> = headers.get_all("accept").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
            s.lock().unwrap().push(all.join(", "));
            manifest_response(method, &sha256(MANIFEST))
        })
    })
    .await;
    client(&f.url).head_manifest(&name(), &tag(), &accept_all()).await.unwrap();
    let accept = seen.lock().unwrap()[0].clone();
    let values: Vec<&str> = accept.split(',').map(str::trim).collect();
    assert_eq!(values, metahub_upstream::ACCEPT_ALL);
}

#[tokio::test]
async fn digests_are_verified() {
    let wrong = sha256(b"something else");
    let w = wrong.clone();
    let f = fake(move |_| {
        Arc::new(move |method, path: &str, _| {
            if path.ends_with("/lying-tag") {
                manifest_response(method, &w)
            } else if path.ends_with("/bad-digest-header") {
                manifest_response(method, "sha256:xyz")
            } else if path.ends_with("/no-digest") {
                response(200, &[("content-type", OCI_MANIFEST)], MANIFEST)
            } else {
                // Asked by digest, answers bytes that do not hash to it.
                response(200, &[("content-type", OCI_MANIFEST)], MANIFEST)
            }
        })
    })
    .await;
    let c = client(&f.url);
    let e = c.get_manifest(&name(), &"lying-tag".parse().unwrap(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    let e = c.get_manifest(&name(), &"bad-digest-header".parse().unwrap(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    let e = c.get_manifest(&name(), &wrong.parse().unwrap(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    // HEAD without Docker-Content-Digest falls back to GET and hashes the bytes.
    let h = c.head_manifest(&name(), &"no-digest".parse().unwrap(), &accept_all()).await.unwrap();
    assert_eq!(h.digest.as_str(), sha256(MANIFEST));
    assert_eq!(h.media_type, OCI_MANIFEST);
    assert_eq!(h.size, MANIFEST.len() as u64);
}

#[tokio::test]
async fn upstream_statuses_map_onto_the_error_table() {
    let f = fake(|_| {
        Arc::new(move |_, path: &str, _| {
            let json = [("content-type", "application/json")];
            match path.rsplit('/').next().unwrap_or_default() {
                "rate" => response(429, &[("retry-after", "7")], ""),
                "down" => response(503, &[], "maintenance"),
                "forbidden" => response(403, &[], ""),
                "noname" => response(404, &json, r#"{"errors":[{"code":"NAME_UNKNOWN","message":"x"}]}"#),
                "html" => response(200, &[("content-type", "text/html")], "<html>login</html>"),
                "notjson" => response(200, &[("content-type", OCI_MANIFEST)], "hello"),
                "teapot" => response(418, &[], ""),
                _ => response(404, &json, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
            }
        })
    })
    .await;
    let c = client(&f.url);
    let get = |t: &'static str| {
        let c = &c;
        async move { c.get_manifest(&name(), &t.parse().unwrap(), &accept_all()).await.unwrap_err() }
    };
    let e = get("rate").await;
    assert_eq!(e.code, ErrorCode::TooManyRequests, "{e}");
    assert_eq!(e.detail, Some(serde_json::json!({"retryAfter": "7"})));
    let e = get("down").await;
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("503"), "{e}");
    let mut seen = vec![e];
    for (tag, code) in [
        ("forbidden", ErrorCode::Denied),
        ("noname", ErrorCode::NameUnknown),
        ("missing", ErrorCode::ManifestUnknown),
        ("html", ErrorCode::BadGateway),
        ("notjson", ErrorCode::BadGateway),
        ("teapot", ErrorCode::BadGateway),
    ] {
        let e = get(tag).await;
        assert_eq!(e.code, code, "{tag}: {e}");
        seen.push(e);
    }
    assert_eq!(seen[3].message, "manifest org/img:missing is unknown to the default upstream");
    // client-facing messages never name the upstream's host or port (the logs do)
    for e in &seen {
        assert!(!e.message.contains("127.0.0.1") && !e.message.contains(&f.port.to_string()), "{e}");
    }
    let e = c.head_manifest(&name(), &"down".parse().unwrap(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    let e = c.blob_location(&name(), &BLOB.parse().unwrap()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BlobUnknown, "{e}");
}

#[tokio::test]
async fn oversized_manifests_are_refused_by_length_and_while_streaming() {
    // By Content-Length.
    let f =
        fake(|_| Arc::new(move |_, _: &str, _| response(200, &[("content-type", OCI_MANIFEST)], vec![b' '; 10_000])))
            .await;
    let small = ClientOptions { max_manifest_bytes: 1000, ..ClientOptions::default() };
    let e = client_for(&f.url, None, small.clone()).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");

    // Chunked, no length: stops reading once over the limit, though the server would go on for long.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {OCI_MANIFEST}\r\ntransfer-encoding: chunked\r\n\r\n");
        sock.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 500, " ".repeat(500));
        for _ in 0..2000 {
            if sock.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let e = client_for(&url, None, small).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    assert!(e.message.contains("1000 bytes"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

#[tokio::test]
async fn a_closed_port_is_unavailable() {
    let port = free_port();
    let e = client(&format!("http://127.0.0.1:{port}")).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(!e.message.contains(&port.to_string()), "{e}");
}

#[tokio::test]
async fn a_slow_upstream_times_out_as_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // never answer
        }
    });
    let opts = ClientOptions { timeout: Duration::from_millis(500), ..ClientOptions::default() };
    let started = Instant::now();
    let e = client_for(&url, None, opts).head_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

#[tokio::test]
async fn a_non_http_answer_is_a_bad_gateway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(b"SSH-2.0-OpenSSH_9.2\r\ngarbage garbage\r\n\r\n").await;
        }
    });
    let e = client(&url).get_manifest(&name(), &tag(), &accept_all()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    server.abort();
}

/// `small_blob` (image configs, for their NVIDIA requirements): follows the registry's redirect to storage without
/// the registry's credentials, verifies the digest, and refuses what is too large or redirects without end.
#[tokio::test]
async fn small_blobs_follow_redirects_and_are_bounded() {
    let config = br#"{"config":{"Env":["NVIDIA_REQUIRE_CUDA=cuda>=12.4"]}}"#.to_vec();
    let (good, liar) = (sha256(&config), sha256(b"something else"));
    let big = vec![b'x'; 2 << 20];
    let big_digest = sha256(&big);
    let loop_digest = sha256(b"loop");
    let f = {
        let (good, liar, big_digest, loop_digest, config, big) =
            (good.clone(), liar.clone(), big_digest.clone(), loop_digest.clone(), config.clone(), big.clone());
        fake(move |_| {
            Arc::new(move |_, path, headers| {
                if path == format!("/v2/org/img/blobs/{good}") {
                    response(307, &[("location", "/storage/good?sig=1")], "")
                } else if path == "/storage/good?sig=1" {
                    // presigned storage: the registry's credentials are not sent there
                    if headers.contains_key("authorization") {
                        return response(400, &[], "credentials sent to storage");
                    }
                    response(200, &[], config.clone())
                } else if path == format!("/v2/org/img/blobs/{liar}") {
                    response(200, &[], config.clone())
                } else if path == format!("/v2/org/img/blobs/{big_digest}") {
                    response(200, &[], big.clone())
                } else if path == format!("/v2/org/img/blobs/{loop_digest}") {
                    response(307, &[("location", path)], "")
                } else {
                    response(404, &[], r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}"#)
                }
            })
        })
        .await
    };
    let c = client_for(&f.url, Some(("u", "p")), ClientOptions::default());
    let read = |digest: &str| {
        let digest: Digest = digest.parse().unwrap();
        let c = &c;
        async move { c.small_blob(&name(), &digest, 1 << 20).await }
    };
    assert_eq!(read(&good).await.unwrap(), config);
    let e = read(&liar).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    let e = read(&big_digest).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    assert!(e.message.contains("larger than the limit"), "{e}");
    let e = read(&loop_digest).await.unwrap_err();
    assert!(e.message.contains("more than 3 times"), "{e}");
    let e = read(&sha256(b"absent")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BlobUnknown, "{e}");
}
