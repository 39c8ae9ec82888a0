//! Issue 33: what mutation sampling showed no Rust test caught (allow-list boundaries, an anonymous token of
//! another machine type, `/token`'s throttle and `service` check), admin page sessions (one id per sign-in,
//! revoked through the store at sign-out) and the security headers of every admin answer.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use metahub_core::cache::CacheOptions;
use metahub_core::machine::{MachineType, MatchMode};
use metahub_core::ports::{Account, Store};
use metahub_core::service::RegistryService;
use metahub_core::testing::conformance::{l, n};
use metahub_core::testing::{FakeUpstream, MemoryStore};
use metahub_core::token::TokenKeys;
use metahub_http::{AdminAuth, App, HttpConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

const SECRET: &str = "0123456789abcdef0123456789abcdef-admin";
const KEY: [u8; 32] = [7; 32];
const PASSWORD: &str = "battery staple";

fn upstream() -> Arc<FakeUpstream> {
    let doc = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
    ]});
    let upstream = Arc::new(FakeUpstream::default());
    for repository in ["org/app", "org/application", "org/app/sub"] {
        upstream.tag(repository, "latest", metahub_core::filter::OCI_INDEX, doc.to_string());
    }
    upstream
}

fn app_over(store: Arc<MemoryStore>, anonymous: Option<&str>) -> Arc<App> {
    let registry = RegistryService::new(store, upstream(), CacheOptions::default());
    let keys = TokenKeys::new(&KEY, "metahub", 300).unwrap();
    let config = HttpConfig {
        public_url: "http://127.0.0.1:5000".into(),
        service: "metahub".into(),
        anonymous_machine_type: anonymous.map(|name| name.parse().unwrap()),
        origin_secret: None,
    };
    App::with_admin(registry, keys, config, AdminAuth::secret(SECRET).unwrap())
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or_default()
    }
}

async fn send(app: &Arc<App>, request: Request<Body>) -> Answer {
    let response = metahub_http::router(app.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Answer { status, headers, body }
}

async fn get(app: &Arc<App>, path: &str, authorization: Option<&str>) -> Answer {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    send(app, request.body(Body::empty()).unwrap()).await
}

fn basic(login: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}")))
}

async fn setup_account(store: &MemoryStore, repositories: &[&str]) {
    for name in ["skl", "generic"] {
        let mt = MachineType::new(name, vec!["cpu:skylake".into()], MatchMode::Best).unwrap();
        store.put_machine_type(&mt).await.unwrap();
    }
    let account = Account {
        login: l("m-skl"),
        machine_type: n("skl"),
        password_hash: metahub_core::password::hash_password(PASSWORD).unwrap().into(),
        repositories: repositories.iter().map(|r| r.to_string()).collect(),
    };
    store.put_account(&account).await.unwrap();
}

async fn token(app: &Arc<App>, scope: &str) -> String {
    let a = get(app, &format!("/token?service=metahub&scope={scope}"), Some(&basic("m-skl", PASSWORD))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body["token"].as_str().unwrap().to_owned()
}

async fn pull(app: &Arc<App>, repository: &str, token: &str) -> Answer {
    get(app, &format!("/v2/{repository}/manifests/latest"), Some(&format!("Bearer {token}"))).await
}

// ------------------------------------------------------------------------------------------------------------------
// allow-lists

#[tokio::test]
async fn an_allow_list_entry_grants_whole_segments_only() {
    let store = Arc::new(MemoryStore::default());
    let app = app_over(store.clone(), None);
    setup_account(&store, &["org/app"]).await;
    for (repository, granted) in [("org/app", true), ("org/app/sub", true), ("org/application", false)] {
        let token = token(&app, &format!("repository:{repository}:pull")).await;
        let claims = app.keys.verify(&token).unwrap();
        assert_eq!(claims.may_pull(&repository.parse().unwrap()), granted, "/token's grant of {repository}");
        let answer = pull(&app, repository, &token).await;
        assert_eq!(answer.status == StatusCode::OK, granted, "pull of {repository}: {}", answer.body);
    }
    // A token granting org/application (signed with the key: the scope was never the problem) is still refused
    // by the allow-list check of the registry routes.
    let genuine = app.keys.verify(&token(&app, "repository:org/app:pull").await).unwrap();
    let mut forged = genuine.clone();
    forged.access[0].name = "org/application".into();
    let key = jsonwebtoken::EncodingKey::from_secret(&KEY).unwrap();
    let forged =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &forged, &key).unwrap();
    let answer = pull(&app, "org/application", &forged).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::FORBIDDEN, "DENIED"), "{}", answer.body);
}

// ------------------------------------------------------------------------------------------------------------------
// anonymous tokens

#[tokio::test]
async fn an_anonymous_token_of_another_machine_type_is_refused() {
    let store = Arc::new(MemoryStore::default());
    let app = app_over(store.clone(), Some("generic"));
    setup_account(&store, &[]).await;
    let anonymous = get(&app, "/token?service=metahub&scope=repository:org/app:pull", None).await;
    assert_eq!(anonymous.status, StatusCode::OK, "{}", anonymous.body);
    let anonymous = anonymous.body["token"].as_str().unwrap().to_owned();
    let claims = app.keys.verify(&anonymous).unwrap();
    assert_eq!((claims.mt.as_str(), claims.fp.as_deref()), ("generic", None));
    assert_eq!(pull(&app, "org/app", &anonymous).await.status, StatusCode::OK, "the positive control");

    let key = jsonwebtoken::EncodingKey::from_secret(&KEY).unwrap();
    let mut other = claims.clone();
    other.mt = "skl".parse().unwrap();
    let other = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &other, &key).unwrap();
    let answer = pull(&app, "org/app", &other).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{}", answer.body);

    // a signed token whose machine type is not a valid name is an invalid token, not a server error
    let mut malformed = serde_json::to_value(&claims).unwrap();
    malformed["mt"] = serde_json::json!("generic/../x");
    let malformed =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &malformed, &key).unwrap();
    let answer = pull(&app, "org/app", &malformed).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{}", answer.body);
    assert!(answer.body.to_string().contains("invalid token"), "{}", answer.body);

    // and once anonymous pulls are off, no anonymous token is accepted at all
    let off = app_over(store, None);
    let answer = pull(&off, "org/app", &anonymous).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{}", answer.body);
}

// ------------------------------------------------------------------------------------------------------------------
// /token

#[tokio::test]
async fn repeated_wrong_passwords_are_throttled_by_token() {
    let store = Arc::new(MemoryStore::default());
    let app = app_over(store.clone(), None);
    setup_account(&store, &[]).await;
    let path = "/token?service=metahub&scope=repository:org/app:pull";
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&app, path, Some(&basic("m-skl", "wrong password"))).await);
    }
    assert_eq!(statuses[0].status, StatusCode::UNAUTHORIZED, "{}", statuses[0].body);
    let throttled = statuses.iter().find(|a| a.status == StatusCode::TOO_MANY_REQUESTS);
    let throttled =
        throttled.unwrap_or_else(|| panic!("no 429 in {:?}", statuses.iter().map(|a| a.status).collect::<Vec<_>>()));
    assert_eq!(throttled.code(), "TOOMANYREQUESTS");
    assert!(throttled.headers.contains_key(header::RETRY_AFTER));
    // the right password is refused too while the account backs off: the throttle is not fooled by a guess
    let right = get(&app, path, Some(&basic("m-skl", PASSWORD))).await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS, "{}", right.body);
}

#[tokio::test]
async fn token_for_another_service_is_refused() {
    let store = Arc::new(MemoryStore::default());
    let app = app_over(store.clone(), Some("generic"));
    setup_account(&store, &[]).await;
    for authorization in [Some(basic("m-skl", PASSWORD)), None] {
        let answer = get(&app, "/token?service=another&scope=repository:org/app:pull", authorization.as_deref()).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{}", answer.body);
        let answer = get(&app, "/token?service=metahub&scope=repository:org/app:pull", authorization.as_deref()).await;
        assert_eq!(answer.status, StatusCode::OK, "the positive control: {}", answer.body);
    }
}

// ------------------------------------------------------------------------------------------------------------------
// admin page sessions

/// Signs in with the secret; the cookie (`metahub_admin=…`) and the CSRF token.
async fn sign_in(app: &Arc<App>) -> (String, String) {
    let request = Request::post("/admin/session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"secret": SECRET}).to_string()))
        .unwrap();
    let answer = send(app, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let set = answer.headers[header::SET_COOKIE].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();
    (cookie, answer.body["csrf"].as_str().unwrap().to_owned())
}

async fn with_cookie(
    app: &Arc<App>,
    method: &str,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Value,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path).header(header::COOKIE, cookie);
    if let Some(csrf) = csrf {
        request = request.header("x-metahub-csrf", csrf).header(header::CONTENT_TYPE, "application/json");
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    send(app, request.body(body).unwrap()).await
}

#[tokio::test]
async fn each_sign_in_is_its_own_session_in_the_audit_log() {
    let store = Arc::new(MemoryStore::default());
    let app = app_over(store.clone(), None);
    let (first, first_csrf) = sign_in(&app).await;
    let (second, second_csrf) = sign_in(&app).await;
    assert_ne!(first, second, "two sign-ins in the same second get two cookies");
    for (i, (cookie, csrf)) in [(&first, &first_csrf), (&second, &second_csrf)].into_iter().enumerate() {
        let body = json!({"features": ["cpu:skylake"]});
        let answer = with_cookie(&app, "PUT", &format!("/admin/machine-types/mt{i}"), cookie, Some(csrf), body).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let changes = store.changes(10).await.unwrap();
    let who: Vec<&str> = changes.iter().map(|c| c.who.as_str()).collect();
    assert_eq!(who.len(), 2);
    assert!(who.iter().all(|w| w.starts_with("admin-secret (page, session ")), "{who:?}");
    assert_ne!(who[0], who[1], "the audit log tells the two sessions apart");
    let id = |cookie: &str| cookie.trim_start_matches("metahub_admin=").split('.').next().unwrap().to_owned();
    assert_eq!(who[1], format!("admin-secret (page, session {})", id(&first)));
    assert_eq!(who[0], format!("admin-secret (page, session {})", id(&second)));
}

#[tokio::test]
async fn a_signed_out_cookie_is_refused_by_every_instance() {
    let store = Arc::new(MemoryStore::default());
    // Two Lambda instances (two apps) over one store.
    let (one, two) = (app_over(store.clone(), None), app_over(store.clone(), None));
    let (cookie, _) = sign_in(&one).await;
    let (other, _) = sign_in(&one).await;
    for app in [&one, &two] {
        let answer = with_cookie(app, "GET", "/admin/accounts", &cookie, None, Value::Null).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let out = with_cookie(&one, "DELETE", "/admin/session", &cookie, None, Value::Null).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    for app in [&one, &two] {
        let answer = with_cookie(app, "GET", "/admin/accounts", &cookie, None, Value::Null).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"), "{}", answer.body);
        let session = with_cookie(app, "GET", "/admin/session", &cookie, None, Value::Null).await;
        assert_eq!(session.body["signedIn"], json!(false), "{}", session.body);
        // the other sign-in goes on
        let answer = with_cookie(app, "GET", "/admin/accounts", &other, None, Value::Null).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
}

// ------------------------------------------------------------------------------------------------------------------
// security headers

#[tokio::test]
async fn every_admin_answer_carries_the_security_headers() {
    let app = app_over(Arc::new(MemoryStore::default()), None);
    let bearer = format!("Bearer {SECRET}");
    for (path, authorization, status) in [
        ("/admin/accounts", Some(bearer.as_str()), StatusCode::OK),
        ("/admin/machine-types", Some(bearer.as_str()), StatusCode::OK),
        ("/admin/changes", Some(bearer.as_str()), StatusCode::OK),
        ("/admin/accounts", None, StatusCode::UNAUTHORIZED),
        ("/admin/accounts/nobody", Some(bearer.as_str()), StatusCode::NOT_FOUND),
        ("/admin/session", None, StatusCode::OK),
        ("/admin/", None, StatusCode::OK),
    ] {
        let answer = get(&app, path, authorization).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        let h = |name: header::HeaderName| answer.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert!(h(header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'"), "{path}");
        assert_eq!(h(header::X_FRAME_OPTIONS), "DENY", "{path}");
    }
}
