//! The store conformance suite against a real DynamoDB API: `AWS_ENDPOINT_URL` when set (e.g. LocalStack on :4566),
//! else a moto server started here (`pip install 'moto[server]'`). Skipped, with a notice, when neither is there.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use metahub_core::ErrorCode;
use metahub_core::ports::Store;
use metahub_core::testing::conformance::{self, Fixture, account, l, machine_type, n};
use metahub_store_dynamodb::DynamoStore;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A moto server for the length of a test; killed when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(program)).find(|p| p.is_file())
}

/// moto_server answering one request at a time. DynamoDB runs each request, a TransactWriteItems included, in
/// isolation; moto's threaded server does not (a DeleteItem can land between a transaction's condition checks and
/// its writes), and the race tests of the conformance suite then fail for moto's sake under load.
const MOTO_ONE_REQUEST_AT_A_TIME: &str = "import sys, moto.server as m
run = m.run_simple
m.run_simple = lambda *a, **k: run(*a, **{**k, 'threaded': False})
m.main(sys.argv[1:])";

/// The Python moto_server runs under (its `#!` line when that names a python), so that the same moto is imported.
fn python_of(moto_server: &std::path::Path) -> String {
    let script = std::fs::read_to_string(moto_server).unwrap_or_default();
    let shebang = script.lines().next().and_then(|l| l.strip_prefix("#!")).map(str::trim);
    let is_python =
        |path: &str| std::path::Path::new(path).file_name().is_some_and(|n| n.to_string_lossy().starts_with("python"));
    match shebang {
        Some(interpreter) if is_python(interpreter) => interpreter.to_owned(),
        _ => "python3".to_owned(), // a shim (pyenv) or `env python3`
    }
}

/// The endpoint to test against, and the moto process when we started one.
fn endpoint() -> Option<(String, Option<Moto>)> {
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL")
        && !url.is_empty()
    {
        return Some((url, None));
    }
    let Some(moto) = which("moto_server") else {
        eprintln!("SKIPPED: moto_server not found and AWS_ENDPOINT_URL not set; pip install 'moto[server]'");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(python_of(&moto))
        .args(["-c", MOTO_ONE_REQUEST_AT_A_TIME, "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let guard = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((format!("http://127.0.0.1:{port}"), Some(guard)))
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(metahub_store_dynamodb::https_client())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    Client::from_conf(config)
}

struct Tables {
    client: Client,
    prefix: String,
    n: Mutex<u32>,
    current: Mutex<String>,
}

#[async_trait]
impl Fixture for Tables {
    async fn fresh(&self) -> Arc<dyn Store> {
        let table = {
            let mut n = self.n.lock().unwrap();
            *n += 1;
            format!("{}-{n}", self.prefix)
        };
        let store = DynamoStore::new(self.client.clone(), table.clone());
        store.create_table().await.unwrap();
        *self.current.lock().unwrap() = table;
        Arc::new(store)
    }

    async fn put_malformed_machine_type(&self, name: &str) {
        let table = self.current.lock().unwrap().clone();
        self.client
            .put_item()
            .table_name(table)
            .item("pk", AttributeValue::S(format!("MT#{name}")))
            .item("sk", AttributeValue::S("MT".into()))
            .item("features", AttributeValue::L(vec![AttributeValue::S("cpu:not-a-cpu".into())]))
            .send()
            .await
            .unwrap();
    }
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("metahub-test-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn against_dynamodb_api() {
    let Some((url, _moto)) = endpoint() else {
        return;
    };
    let client = client(&url);
    let fixture = Tables {
        client: client.clone(),
        prefix: unique_prefix(),
        n: Mutex::new(0),
        current: Mutex::new(String::new()),
    };
    conformance::run_all(&fixture).await;

    eprintln!("dynamodb: create_table is idempotent");
    let table = format!("{}-schema", fixture.prefix);
    let store = DynamoStore::new(client.clone(), table.clone());
    store.create_table().await.unwrap();
    store.create_table().await.unwrap();

    eprintln!("dynamodb: items typed by an operator with put-item, as README.md shows");
    let put = |item: Vec<(&str, AttributeValue)>| {
        let req = client.put_item().table_name(&table);
        item.into_iter().fold(req, |r, (k, v)| r.item(k, v)).send()
    };
    let s = |v: &str| AttributeValue::S(v.into());
    put(vec![
        ("pk", s("MT#skylake-v100")),
        ("sk", s("MT")),
        ("features", AttributeValue::L(vec![s("cpu:skylake"), s("nvcap:7.0")])),
        ("match", s("best")),
    ])
    .await
    .unwrap();
    put(vec![("pk", s("MT#zen3")), ("sk", s("MT")), ("features", AttributeValue::Ss(vec!["cpu:zen3".into()]))])
        .await
        .unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$G2rXiPGAbU+7Fx2UUd1hgw$CGiOuSCGjRTV45oMfoiqEY1UPsu6A2JuBT7bupaOJkQ";
    // The README's example hash (argon2-cffi) verifies with metahub's own check.
    assert!(metahub_core::password::verify_password("correct horse battery", hash));
    put(vec![
        ("pk", s("ACCT#node-17")),
        ("sk", s("ACCT")),
        ("machineType", s("skylake-v100")),
        ("passwordHash", s(hash)),
    ])
    .await
    .unwrap();
    assert_eq!(
        store.machine_type(&n("skylake-v100")).await.unwrap(),
        Some(machine_type("skylake-v100", &["cpu:skylake", "nvcap:7.0"]))
    );
    assert_eq!(store.machine_type(&n("zen3")).await.unwrap(), Some(machine_type("zen3", &["cpu:zen3"])));
    let node = store.account(&l("node-17")).await.unwrap().unwrap();
    assert_eq!((node.machine_type.as_str(), node.password_hash.expose_str()), ("skylake-v100", hash));
    // A hand-typed account is not in the type's `users` set; the index still finds it.
    let e = store.delete_machine_type(&n("skylake-v100")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("node-17"), "{e}");
    // metahub moves it and cleans up after it.
    store.put_account(&account("node-17", "zen3")).await.unwrap();
    assert!(store.delete_machine_type(&n("skylake-v100")).await.unwrap());
    assert!(store.delete_account(&l("node-17")).await.unwrap());
    assert!(store.delete_machine_type(&n("zen3")).await.unwrap());

    eprintln!("dynamodb: the conditional delete catches what the index has not indexed yet");
    // An account committed a moment ago is in the type's `users` set before the index shows it.
    put(vec![
        ("pk", s("MT#fresh")),
        ("sk", s("MT")),
        ("features", AttributeValue::L(vec![])),
        ("users", AttributeValue::Ss(vec!["just-now".into(), "a-bit-earlier".into()])),
    ])
    .await
    .unwrap();
    let e = store.delete_machine_type(&n("fresh")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied);
    assert_eq!(e.detail.unwrap()["accounts"], serde_json::json!(["a-bit-earlier", "just-now"]));
    assert!(store.machine_type(&n("fresh")).await.unwrap().is_some());

    eprintln!("dynamodb: generated indexes carry a ttl");
    let repo = "org/app".parse().unwrap();
    let bytes = bytes::Bytes::from_static(b"{\"manifests\":[]}");
    let manifest = metahub_core::ports::Manifest {
        digest: metahub_core::reference::Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        bytes,
    };
    store.put_generated_manifest(&repo, &manifest).await.unwrap();
    let item = client
        .get_item()
        .table_name(&table)
        .key("pk", s(&format!("MAN#org/app@{}", manifest.digest)))
        .key("sk", s("MAN"))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let ttl: u64 = item["ttl"].as_n().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(ttl > now + 29 * 24 * 3600 && ttl <= now + 31 * 24 * 3600, "{ttl}");

    eprintln!("dynamodb: a missing table is UNAVAILABLE naming it");
    let missing = DynamoStore::new(client.clone(), "no-such-table");
    let e = missing.machine_type(&n("x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("no-such-table") && e.message.contains("store init"), "{e}");

    eprintln!("dynamodb: machine types are cached for a warm pull");
    let cached = DynamoStore::new(client.clone(), table.clone());
    cached.put_machine_type(&machine_type("hsw", &["cpu:haswell"])).await.unwrap();
    assert!(cached.machine_type(&n("hsw")).await.unwrap().is_some());
    // Another process changes it; this one serves the cached value until the TTL runs out.
    put(vec![("pk", s("MT#hsw")), ("sk", s("MT")), ("features", AttributeValue::L(vec![s("cpu:zen2")]))])
        .await
        .unwrap();
    assert_eq!(cached.machine_type(&n("hsw")).await.unwrap().unwrap().features().texts(), ["cpu:haswell"]);
    let uncached = DynamoStore::new(client.clone(), table.clone()).with_machine_type_cache_ttl(Duration::ZERO);
    assert_eq!(uncached.machine_type(&n("hsw")).await.unwrap().unwrap().features().texts(), ["cpu:zen2"]);
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_quickly() {
    // A port nobody listens on: bind, then free it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(metahub_store_dynamodb::https_client())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    let store = DynamoStore::new(Client::from_conf(config), "metahub");
    let started = Instant::now();
    let e = store.account(&l("node")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("DynamoDB table metahub"), "{e}");
    let e = store.signing_key_or_insert(b"k").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    eprintln!("unreachable: {e}");
}
