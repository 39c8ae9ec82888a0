//! The admin API through the router, over the in-memory store and scripted upstream of `metahub_core::testing`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use metahub_core::cache::CacheOptions;
use metahub_core::machine::MachineType;
use metahub_core::ports::{Account, Store};
use metahub_core::service::RegistryService;
use metahub_core::testing::conformance::{l, n};
use metahub_core::testing::{FakeUpstream, MemoryStore};
use metahub_core::token::TokenKeys;
use metahub_http::{AdminAuth, AdminPrincipal, App, HttpConfig, OriginSecrets};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

const SECRET: &str = "0123456789abcdef0123456789abcdef-admin";

/// One index for `org/app:latest`, `org/app:v1` and `other/app:latest`: a skylake build and a generic one.
fn upstream() -> Arc<FakeUpstream> {
    let doc = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "a".repeat(64)), "size": 1,
         "platform": {"os": "linux", "architecture": "amd64", "features": ["cpu:skylake"]}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]});
    let upstream = Arc::new(FakeUpstream::default());
    for (repository, tag) in [("org/app", "latest"), ("org/app", "v1"), ("other/app", "latest")] {
        upstream.tag(repository, tag, metahub_core::filter::OCI_INDEX, doc.to_string());
    }
    upstream
}

struct Harness {
    app: Arc<App>,
    store: Arc<MemoryStore>,
}

fn harness(admin: AdminAuth) -> Harness {
    harness_with(admin, None)
}

fn harness_with(admin: AdminAuth, origin_secret: Option<OriginSecrets>) -> Harness {
    let store = Arc::new(MemoryStore::default());
    let registry = RegistryService::new(store.clone(), upstream(), CacheOptions::default());
    let keys = TokenKeys::new(&[7u8; 32], "metahub", 300).unwrap();
    let config = HttpConfig {
        public_url: "http://127.0.0.1:5000".into(),
        service: "metahub".into(),
        anonymous_machine_type: None,
        origin_secret,
    };
    Harness { app: App::with_admin(registry, keys, config, admin), store }
}

impl Harness {
    async fn send(&self, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default()).unwrap();
        self.send_request(request).await
    }

    async fn send_request(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = metahub_http::router(self.app.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, value)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.send(method, path, Some(&format!("Bearer {SECRET}")), body.as_deref()).await
    }
}

fn code(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or_default()
}

fn message(v: &Value) -> &str {
    v["errors"][0]["message"].as_str().unwrap_or_default()
}

fn secret_harness() -> Harness {
    harness(AdminAuth::secret(SECRET).unwrap())
}

#[tokio::test]
async fn refuses_missing_wrong_and_pull_credentials() {
    let h = secret_harness();
    let (s, v) = h.send("GET", "/admin/machine-types", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{v}");
    let (s, _) = h.send("GET", "/admin/machine-types", Some("Bearer wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let almost = format!("Bearer {}x", SECRET);
    let (s, _) = h.send("GET", "/admin/machine-types", Some(&almost), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let basic = format!("Basic {SECRET}");
    let (s, _) = h.send("PUT", "/admin/machine-types/x", Some(&basic), Some(r#"{"features":[]}"#)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A valid pull token of this very server.
    let token = h.app.keys.issue("m-x", &"x".parse().unwrap(), vec![]).unwrap().token;
    assert!(!token.is_empty());
    let (s, _) = h.send("GET", "/admin/changes", Some(&format!("Bearer {token}")), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Nothing was changed by the refused requests.
    assert!(h.store.list_machine_types().await.unwrap().is_empty());
    let (s, v) = h.admin("GET", "/admin/machine-types", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn disabled_admin_has_no_routes_and_admin_router_refuses() {
    let h = harness(AdminAuth::Disabled);
    let (s, v) = h.send("GET", "/admin/machine-types", Some(&format!("Bearer {SECRET}")), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NOT_FOUND"));
    let request = Request::get("/admin/machine-types").body(Body::empty()).unwrap();
    let response = metahub_http::admin_router(h.app.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn iam_needs_the_principal_and_records_it() {
    let h = harness(AdminAuth::Iam);
    let put = || Request::put("/admin/machine-types/hsw").body(Body::from(r#"{"features":["cpu:haswell"]}"#)).unwrap();
    let response = metahub_http::admin_router(h.app.clone()).oneshot(put()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The secret means nothing in IAM mode.
    let mut with_secret = put();
    with_secret.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {SECRET}").parse().unwrap());
    let response = metahub_http::admin_router(h.app.clone()).oneshot(with_secret).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let arn = "arn:aws:iam::123456789012:user/ops";
    let mut signed = put();
    signed.extensions_mut().insert(AdminPrincipal(arn.into()));
    let response = metahub_http::admin_router(h.app.clone()).oneshot(signed).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let changes = h.store.changes(100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].who.as_str(), changes[0].action.as_str()), (arn, "put-machine-type"));
}

#[tokio::test]
async fn machine_types_crud_and_validation() {
    let h = secret_harness();
    let (s, v) = h
        .admin(
            "PUT",
            "/admin/machine-types/hsw-m60",
            Some(json!({"features": ["cpu:haswell", "nvcap:5.2"], "match": "exact"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"name": "hsw-m60", "features": ["cpu:haswell", "nvcap:5.2"], "match": "exact"}));
    let (s, got) = h.admin("GET", "/admin/machine-types/hsw-m60", None).await;
    assert_eq!((s, &got), (StatusCode::OK, &v));
    // What get answers can be sent back as is.
    let (s, _) = h.admin("PUT", "/admin/machine-types/hsw-m60", Some(got)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = h.admin("GET", "/admin/machine-types", None).await;
    assert_eq!(list, json!([v]));

    let cases: Vec<(Value, &str)> = vec![
        (json!({"features": ["cpu:skylak"]}), "skylake"),
        (json!({"features": ["nvcap:7"]}), "nvcap"),
        (json!({"features": ["cpu:zen2", "cpu:zen2"]}), "twice"),
        (json!({"features": "cpu:zen2"}), "invalid type"),
        (json!({"features": ["cpu:zen2"], "match": "closest"}), "closest"),
        (json!({"features": [], "colour": "red"}), "unknown field"),
        (json!({"match": "best"}), "missing field"),
        (json!({"name": "other", "features": []}), "path names"),
    ];
    for (body, needle) in cases {
        let (s, v) = h.admin("PUT", "/admin/machine-types/bad", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(message(&v).contains(needle), "{body}: {v}");
    }
    let (_, v) = h.admin("PUT", "/admin/machine-types/bad", Some(json!({"features": ["cpu:skylak"]}))).await;
    let suggestions = v["errors"][0]["detail"]["suggestions"].as_array().unwrap();
    assert!(suggestions.contains(&json!("skylake")), "{v}");
    let (s, v) = h.send("PUT", "/admin/machine-types/bad", Some(&format!("Bearer {SECRET}")), Some("{not json")).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "INVALID"), "{v}");
    let (s, _) = h.send("PUT", "/admin/machine-types/bad", Some(&format!("Bearer {SECRET}")), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = h.admin("PUT", "/admin/machine-types/bad%20name", Some(json!({"features": []}))).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "NAME_INVALID"), "{v}");
    assert!(h.store.machine_type(&n("bad")).await.unwrap().is_none());

    let (s, v) = h.admin("GET", "/admin/machine-types/nope", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    let (s, _) = h.admin("POST", "/admin/machine-types/hsw-m60", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = h.admin("DELETE", "/admin/machine-types/hsw-m60", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h.admin("DELETE", "/admin/machine-types/hsw-m60", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn accounts_crud_rotation_and_audit() {
    let h = secret_harness();
    h.admin("PUT", "/admin/machine-types/skl", Some(json!({"features": ["cpu:skylake"]}))).await;
    let (s, v) =
        h.admin("PUT", "/admin/accounts/m-skl", Some(json!({"machineType": "skl", "password": "correct horse"}))).await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"login": "m-skl", "machineType": "skl"})));
    let stored = h.store.account(&l("m-skl")).await.unwrap().unwrap().password_hash;
    assert!(metahub_core::password::verify_password("correct horse", stored.expose_str()));

    let hash = metahub_core::password::hash_password("battery staple").unwrap();
    let (s, _) =
        h.admin("PUT", "/admin/accounts/m-two", Some(json!({"machineType": "skl", "passwordHash": hash}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = h.admin("GET", "/admin/accounts", None).await;
    assert_eq!(list, json!([{"login": "m-skl", "machineType": "skl"}, {"login": "m-two", "machineType": "skl"}]));
    assert!(!list.to_string().contains("argon2"), "accounts never show hashes: {list}");

    let bad_bodies = [
        json!({"machineType": "skl", "password": "short"}),
        json!({"machineType": "skl"}),
        json!({"machineType": "skl", "password": "long enough", "passwordHash": hash}),
        json!({"machineType": "skl", "passwordHash": "$2b$12$abcdefghijklmnopqrstuv"}),
        json!({"machineType": "skl", "passwordHash": "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"}),
        // argon2id, but outside the accepted parameters: 4 GiB per login, or cheap to crack
        json!({"machineType": "skl", "passwordHash": "$argon2id$v=19$m=4194304,t=4294967295,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"}),
        json!({"machineType": "skl", "passwordHash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"}),
        json!({"machineType": "skl", "password": "long enough", "repositories": ["../x"]}),
        json!({"machineType": 5, "password": "long enough"}),
    ];
    for body in bad_bodies {
        let (s, v) = h.admin("PUT", "/admin/accounts/m-bad", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let body = json!({"machineType": "skl", "password": "long enough", "repositories": ["org/", "other/app"]});
    let (s, v) = h.admin("PUT", "/admin/accounts/m-limited", Some(body)).await;
    assert_eq!((s, &v["repositories"]), (StatusCode::OK, &json!(["org/", "other/app"])));
    let (s, _) = h.admin("DELETE", "/admin/accounts/m-limited", None).await;
    assert!(s.is_success());
    let (s, v) =
        h.admin("PUT", "/admin/accounts/m-bad", Some(json!({"machineType": "nope", "password": "long enough"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));

    let (s, v) = h.admin("DELETE", "/admin/machine-types/skl", None).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "DENIED"));
    assert!(message(&v).contains("m-skl") && message(&v).contains("m-two"), "{v}");

    let (s, _) = h.admin("PUT", "/admin/accounts/m-skl/password", Some(json!({"password": "new password!"}))).await;
    assert_eq!(s, StatusCode::OK);
    let stored = h.store.account(&l("m-skl")).await.unwrap().unwrap().password_hash;
    assert!(metahub_core::password::verify_password("new password!", stored.expose_str()));
    let (s, _) = h.admin("PUT", "/admin/accounts/nobody/password", Some(json!({"password": "new password!"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = h.admin("GET", "/admin/accounts/m-skl", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"login": "m-skl", "machineType": "skl"})));

    for login in ["m-skl", "m-two"] {
        let (s, _) = h.admin("DELETE", &format!("/admin/accounts/{login}"), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (s, _) = h.admin("DELETE", "/admin/machine-types/skl", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, v) = h.admin("GET", "/admin/changes?limit=100", None).await;
    assert_eq!(s, StatusCode::OK);
    let actions: Vec<(&str, &str)> =
        v.as_array().unwrap().iter().map(|c| (c["action"].as_str().unwrap(), c["target"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("delete-machine-type", "skl"),
            ("delete-account", "m-two"),
            ("delete-account", "m-skl"),
            ("rotate-password", "m-skl"),
            ("delete-account", "m-limited"),
            ("put-account", "m-limited machineType=skl repositories=org/,other/app"),
            ("put-account", "m-two machineType=skl"),
            ("put-account", "m-skl machineType=skl"),
            ("put-machine-type", "skl [cpu:skylake] best"),
        ]
    );
    assert!(
        v.as_array().unwrap().iter().all(|c| c["who"] == "admin-secret" && c["at"].as_u64().unwrap() > 1_600_000_000)
    );
    assert!(!v.to_string().contains("horse"), "no password in the audit log");
    let (_, v) = h.admin("GET", "/admin/changes?limit=2", None).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (s, _) = h.admin("GET", "/admin/changes?limit=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn explain_route() {
    let h = secret_harness();
    h.admin("PUT", "/admin/machine-types/cll", Some(json!({"features": ["cpu:cascadelake"]}))).await;
    let (s, v) = h.admin("GET", "/admin/explain?machineType=cll&image=org/app:v1", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["index"], json!(true));
    assert_eq!(v["served"], json!([format!("sha256:{}", "a".repeat(64))]));
    assert_eq!(
        v["entries"][1]["reason"],
        json!("generic: fits every machine; but a more specific entry of the same platform is served")
    );
    let (s, _) = h.admin("GET", "/admin/explain?machineType=nope&image=org/app:v1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.admin("GET", "/admin/explain?machineType=cll", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h.admin("GET", "/admin/explain?machineType=cll&image=Bad//Name", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[test]
fn secrets_are_checked_and_redacted() {
    assert!(AdminAuth::secret("too short").is_err());
    let auth = AdminAuth::secret(SECRET).unwrap();
    assert!(!format!("{auth:?}").contains(SECRET));
}

#[tokio::test]
async fn watched_images_and_the_matrix() {
    let h = secret_harness();
    h.admin("PUT", "/admin/machine-types/skylake", Some(json!({"features": ["cpu:skylake"]}))).await;
    h.admin("PUT", "/admin/machine-types/plain", Some(json!({"features": []}))).await;
    let (s, v) = h.admin("POST", "/admin/watched-images", Some(json!({"image": "org/app"}))).await;
    assert_eq!((s, &v), (StatusCode::CREATED, &json!({"image": "org/app:latest"})));
    let (s, _) = h.admin("POST", "/admin/watched-images", Some(json!({"image": "org/app:latest"}))).await;
    assert_eq!(s, StatusCode::OK, "already watched");
    let (s, v) = h.admin("POST", "/admin/watched-images", Some(json!({"image": "Bad Name"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "NAME_INVALID"), "{v}");
    let (_, v) = h.admin("GET", "/admin/watched-images", None).await;
    assert_eq!(v, json!(["org/app:latest"]));

    let (s, v) = h.admin("GET", "/admin/matrix", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["machineTypes"].as_array().unwrap().len(), 2);
    let cells = v["images"][0]["cells"].as_array().unwrap();
    // each cell is what /admin/explain answers for that pair
    let (_, explained) = h.admin("GET", "/admin/explain?machineType=skylake&image=org/app:latest", None).await;
    assert_eq!(cells[1], explained);
    assert_eq!(cells[1]["served"], json!([format!("sha256:{}", "a".repeat(64))]));
    assert_eq!(cells[0]["served"], json!([format!("sha256:{}", "b".repeat(64))]), "plain gets the generic build");

    let (s, _) = h.admin("DELETE", "/admin/watched-images?image=org/app", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.admin("DELETE", "/admin/watched-images?image=org/app", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    let actions: Vec<String> = h.store.changes(100).await.unwrap().into_iter().rev().map(|c| c.action).collect();
    assert!(actions.ends_with(&["watch-image".to_owned(), "unwatch-image".to_owned()]), "{actions:?}");
}

#[tokio::test]
async fn account_moves_to_another_machine_type_keeping_its_password() {
    let h = secret_harness();
    for mt in ["a", "b"] {
        h.admin("PUT", &format!("/admin/machine-types/{mt}"), Some(json!({"features": []}))).await;
    }
    let (s, _) =
        h.admin("PUT", "/admin/accounts/n1", Some(json!({"machineType": "a", "password": "pw-0123456789"}))).await;
    assert_eq!(s, StatusCode::OK);
    let hash = h.store.account(&l("n1")).await.unwrap().unwrap().password_hash;
    let (s, v) = h.admin("PUT", "/admin/accounts/n1/machine-type", Some(json!({"machineType": "b"}))).await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"login": "n1", "machineType": "b"})));
    assert_eq!(h.store.account(&l("n1")).await.unwrap().unwrap().password_hash, hash);
    let (s, v) = h.admin("PUT", "/admin/accounts/n1/machine-type", Some(json!({"machineType": "nope"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"), "{v}");
    let (s, v) = h.admin("PUT", "/admin/accounts/ghost/machine-type", Some(json!({"machineType": "b"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"), "{v}");
}

#[tokio::test]
async fn the_page_session_in_iam_mode() {
    let h = harness(AdminAuth::Iam);
    let (s, v) = h.send("GET", "/admin/session", None, None).await;
    assert_eq!((s, &v), (StatusCode::OK, &json!({"signedIn": false, "mode": "iam"})));
    let mut request = Request::builder().uri("/admin/session").body(Body::empty()).unwrap();
    request.extensions_mut().insert(AdminPrincipal("arn:aws:iam::1:user/op".into()));
    let (_, v) = h.send_request(request).await;
    assert_eq!(v["principal"], "arn:aws:iam::1:user/op");
    let (s, v) = h.send("POST", "/admin/session", None, Some(r#"{"secret":"x"}"#)).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"), "no secret to sign in with");
}

// ---------------------------------------------------------------- what every answer carries, behind CloudFront

async fn ping(h: &Harness, headers: &[(&str, &str)]) -> (StatusCode, axum::http::HeaderMap) {
    let mut request = Request::builder().uri("/v2/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = metahub_http::router(h.app.clone()).oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test]
async fn no_answer_is_cacheable() {
    let h = harness(AdminAuth::Secret(SECRET.into()));
    let (status, headers) = ping(&h, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let (status, headers) = ping(&h, &[("authorization", "Bearer nonsense")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CACHE_CONTROL], "private, no-store");
    let (status, _) = h.admin("GET", "/admin/machine-types", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_current_and_the_previous_origin_secret_are_accepted() {
    let secrets = OriginSecrets { current: "secret-v2".into(), previous: Some("secret-v1".into()) };
    let h = harness_with(AdminAuth::Disabled, Some(secrets));
    for accepted in ["secret-v2", "secret-v1"] {
        let (status, _) = ping(&h, &[("x-origin-verify", accepted)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{accepted}: reaches the registry (asks for a token)");
    }
    for refused in [None, Some("secret-v0"), Some("secret-v2x"), Some("")] {
        let headers: Vec<_> = refused.map(|r| ("x-origin-verify", r)).into_iter().collect();
        let (status, answer) = ping(&h, &headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused:?}");
        assert_eq!(answer[header::CACHE_CONTROL], "no-store");
        assert!(answer.get(header::WWW_AUTHENTICATE).is_none());
    }
}

#[tokio::test]
async fn the_viewer_host_names_the_realm_only_behind_cloudfront() {
    let secrets = OriginSecrets { current: "s".into(), previous: None };
    let behind = harness_with(AdminAuth::Disabled, Some(secrets));
    let forwarded = [("x-origin-verify", "s"), ("x-forwarded-host", "Registry.Example.com")];
    let (_, headers) = ping(&behind, &forwarded).await;
    let realm = headers[header::WWW_AUTHENTICATE].to_str().unwrap().to_owned();
    assert!(realm.starts_with("Bearer realm=\"https://registry.example.com/token\""), "{realm}");
    // A host that is not a plain host[:port] is ignored (the configured URL is used).
    let (_, headers) = ping(&behind, &[("x-origin-verify", "s"), ("x-forwarded-host", "evil\",x=\"")]).await;
    assert!(
        headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer realm=\"http://127.0.0.1:5000/token\"")
    );
    // Without an origin secret anyone could send the header: it is not trusted.
    let local = harness(AdminAuth::Disabled);
    let (_, headers) = ping(&local, &[("x-forwarded-host", "registry.example.com")]).await;
    assert!(
        headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer realm=\"http://127.0.0.1:5000/token\"")
    );
}

/// A login through `/token` (Basic), for `scope`; the token.
async fn login(h: &Harness, login: &str, password: &str, scope: &str) -> String {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
    let path = format!("/token?service=metahub&scope={scope}");
    let (s, v) = h.send("GET", &path, Some(&format!("Basic {basic}")), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn pull(h: &Harness, repository: &str, token: &str) -> (StatusCode, Value) {
    h.send("GET", &format!("/v2/{repository}/manifests/latest"), Some(&format!("Bearer {token}")), None).await
}

async fn setup_account(h: &Harness, repositories: &[&str]) {
    for name in ["skl", "other"] {
        let mt = MachineType::new(name, vec!["cpu:skylake".into()], metahub_core::machine::MatchMode::Best).unwrap();
        h.store.put_machine_type(&mt).await.unwrap();
    }
    let account = Account {
        login: l("m-skl"),
        machine_type: n("skl"),
        password_hash: metahub_core::password::hash_password("battery staple").unwrap().into(),
        repositories: repositories.iter().map(|r| r.to_string()).collect(),
    };
    h.store.put_account(&account).await.unwrap();
}

#[tokio::test]
async fn each_claim_is_checked_on_a_validly_signed_token() {
    let h = secret_harness();
    setup_account(&h, &[]).await;
    let genuine = login(&h, "m-skl", "battery staple", "repository:org/app:pull").await;
    assert_eq!(pull(&h, "org/app", &genuine).await.0, StatusCode::OK, "the positive control");
    let claims = h.app.keys.verify(&genuine).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]).unwrap();
    let sign = |c: &metahub_core::token::Claims| {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), c, &key).unwrap()
    };
    assert_eq!(pull(&h, "org/app", &sign(&claims)).await.0, StatusCode::OK, "re-signed unchanged: still good");
    let now = metahub_core::token::now_seconds();
    type Change = Box<dyn Fn(&mut metahub_core::token::Claims)>;
    let changes: [(&str, Change); 6] = [
        ("exp", Box::new(move |c| c.exp = now - 60)),
        ("nbf", Box::new(move |c| c.nbf = now + 3600)),
        ("aud", Box::new(|c| c.aud = "other".into())),
        ("iss", Box::new(|c| c.iss = "evil".into())),
        ("fp", Box::new(|c| c.fp = Some("0".repeat(32)))),
        ("anonymous", Box::new(|c| c.fp = None)),
    ];
    for (claim, change) in changes {
        let mut forged = claims.clone();
        change(&mut forged);
        let (s, v) = pull(&h, "org/app", &sign(&forged)).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{claim}: {v}");
    }
}

#[tokio::test]
async fn account_changes_revoke_tokens_and_repositories_are_enforced() {
    let h = secret_harness();
    setup_account(&h, &["org/"]).await;
    // the scope asked beyond the account's repositories is not granted
    let token = login(&h, "m-skl", "battery staple", "repository:other/app:pull").await;
    let (s, v) = pull(&h, "other/app", &token).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{v}");
    let token = login(&h, "m-skl", "battery staple", "repository:org/app:pull").await;
    // narrowed after the token was issued: the token goes (the account changed)
    let mut account = h.store.account(&l("m-skl")).await.unwrap().unwrap();
    account.repositories = vec!["elsewhere/".into()];
    h.store.put_account(&account).await.unwrap();
    assert_eq!(pull(&h, "org/app", &token).await.0, StatusCode::UNAUTHORIZED);

    // a new password or machine type, or deletion, revokes the tokens issued before
    setup_account(&h, &[]).await;
    for change in ["password", "machine type", "delete"] {
        let token = login(&h, "m-skl", "battery staple", "repository:org/app:pull").await;
        let mut account = h.store.account(&l("m-skl")).await.unwrap().unwrap();
        match change {
            "password" => account.password_hash = metahub_core::password::hash_password("new staple!").unwrap().into(),
            "machine type" => account.machine_type = n("other"),
            _ => {}
        }
        if change == "delete" {
            h.store.delete_account(&l("m-skl")).await.unwrap();
        } else {
            h.store.put_account(&account).await.unwrap();
        }
        let (s, v) = pull(&h, "org/app", &token).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{change}: {v}");
        setup_account(&h, &[]).await;
    }
}

/// `GET /token` with Basic credentials, through a router of its own (so that tasks can run it concurrently).
async fn token_answer(app: Arc<App>, login: &str, password: &str) -> (StatusCode, Value) {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
    let request = Request::builder()
        .uri("/token?service=metahub&scope=repository:org/app:pull")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::empty())
        .unwrap();
    let response = metahub_http::router(app).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_password_verified_a_moment_ago_costs_no_second_hash_and_a_wrong_one_is_never_remembered() {
    let h = secret_harness();
    setup_account(&h, &[]).await;
    assert_eq!(h.app.password_checks(), 0);
    for _ in 0..3 {
        assert_eq!(token_answer(h.app.clone(), "m-skl", "battery staple").await.0, StatusCode::OK);
    }
    assert_eq!(h.app.password_checks(), 1, "hit after the first check");
    for i in 1..=3 {
        let (s, v) = token_answer(h.app.clone(), "m-skl", "battery stapler").await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{v}");
        assert_eq!(h.app.password_checks(), 1 + i, "every wrong password is hashed");
    }
    // an unknown login is hashed (against the dummy) every time too
    for _ in 0..2 {
        assert_eq!(token_answer(h.app.clone(), "ghost", "battery staple").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(h.app.password_checks(), 6);
    assert_eq!(token_answer(h.app.clone(), "m-skl", "battery staple").await.0, StatusCode::OK);
    assert_eq!(h.app.password_checks(), 6, "the right one is still remembered");
}

#[tokio::test]
async fn a_fleet_logging_in_at_once_shares_one_hash() {
    let h = secret_harness();
    setup_account(&h, &[]).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move { token_answer(app, "m-skl", "battery staple").await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.app.password_checks(), 1);
}

#[tokio::test]
async fn account_changes_drop_verified_credentials_at_once() {
    let h = secret_harness();
    for mt in ["a", "b"] {
        h.admin("PUT", &format!("/admin/machine-types/{mt}"), Some(json!({"features": []}))).await;
    }
    let put = json!({"machineType": "a", "password": "pw-0123456789"});
    assert_eq!(h.admin("PUT", "/admin/accounts/n1", Some(put.clone())).await.0, StatusCode::OK);
    let machine_type_of = |v: &Value| h.app.keys.verify(v["token"].as_str().unwrap()).unwrap().mt;
    let (s, v) = token_answer(h.app.clone(), "n1", "pw-0123456789").await;
    assert_eq!((s, machine_type_of(&v).as_str()), (StatusCode::OK, "a"));

    // a new password: the old one is refused (and hashed again), the new one accepted
    let (s, _) = h.admin("PUT", "/admin/accounts/n1/password", Some(json!({"password": "pw-rotated-01"}))).await;
    assert_eq!(s, StatusCode::OK);
    let checks = h.app.password_checks();
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-0123456789").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.app.password_checks(), checks + 1);
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-rotated-01").await.0, StatusCode::OK);

    // another machine type: the next token carries it
    let (s, _) = h.admin("PUT", "/admin/accounts/n1/machine-type", Some(json!({"machineType": "b"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = token_answer(h.app.clone(), "n1", "pw-rotated-01").await;
    assert_eq!((s, machine_type_of(&v).as_str()), (StatusCode::OK, "b"));

    // deleted: refused
    assert_eq!(h.admin("DELETE", "/admin/accounts/n1", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-rotated-01").await.0, StatusCode::UNAUTHORIZED);

    // changed in the store by someone else (another process, another Lambda instance): seen at once
    assert_eq!(h.admin("PUT", "/admin/accounts/n1", Some(put)).await.0, StatusCode::OK);
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-0123456789").await.0, StatusCode::OK);
    let mut account = h.store.account(&l("n1")).await.unwrap().unwrap();
    account.password_hash = metahub_core::password::hash_password("pw-elsewhere-1").unwrap().into();
    h.store.put_account(&account).await.unwrap();
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-0123456789").await.0, StatusCode::UNAUTHORIZED);
    account.machine_type = n("b");
    h.store.put_account(&account).await.unwrap();
    let (s, v) = token_answer(h.app.clone(), "n1", "pw-elsewhere-1").await;
    assert_eq!((s, machine_type_of(&v).as_str()), (StatusCode::OK, "b"));
    account.machine_type = n("a");
    h.store.put_account(&account).await.unwrap();
    let (s, v) = token_answer(h.app.clone(), "n1", "pw-elsewhere-1").await;
    assert_eq!((s, machine_type_of(&v).as_str()), (StatusCode::OK, "a"), "a hit reads the account as stored");
    h.store.delete_account(&l("n1")).await.unwrap();
    assert_eq!(token_answer(h.app.clone(), "n1", "pw-elsewhere-1").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_remembered_password_is_not_answered_where_the_throttle_refuses() {
    let h = secret_harness();
    setup_account(&h, &[]).await;
    assert_eq!(token_answer(h.app.clone(), "m-skl", "battery staple").await.0, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(token_answer(h.app.clone(), "m-skl", "wrong guess").await.0, StatusCode::UNAUTHORIZED);
    }
    // backing off: the right password (remembered) gets the same refusal a guess gets, so a refused guess learns
    // nothing
    let (s, v) = token_answer(h.app.clone(), "m-skl", "battery staple").await;
    assert_eq!((s, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"), "{v}");
}
