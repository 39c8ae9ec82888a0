use async_trait::async_trait;
use metahub_core::ErrorCode;
use metahub_core::ports::Store;
use metahub_core::testing::conformance::{self, Fixture, account, l, machine_type, n};
use metahub_store_file::FileStore;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

struct Files {
    dir: TempDir,
    current: Mutex<Option<FileStore>>,
    n: Mutex<u32>,
}

#[async_trait]
impl Fixture for Files {
    async fn fresh(&self) -> Arc<dyn Store> {
        let n = {
            let mut n = self.n.lock().unwrap();
            *n += 1;
            *n
        };
        let store = FileStore::open(&self.dir.path().join(format!("nested/dir/store-{n}.redb"))).unwrap();
        *self.current.lock().unwrap() = Some(store.clone());
        Arc::new(store)
    }

    async fn put_malformed_machine_type(&self, name: &str) {
        let store = self.current.lock().unwrap().clone().unwrap();
        let json = format!(r#"{{"name":"{name}","features":["cpu:not-a-cpu"],"match":"best"}}"#);
        store.put_raw_machine_type(name, &json).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let fixture = Files { dir: TempDir::new().unwrap(), current: Mutex::new(None), n: Mutex::new(0) };
    conformance::run_all(&fixture).await;
}

#[tokio::test]
async fn persists_across_restarts() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    let key = {
        let store = FileStore::open(&path).unwrap();
        store.put_machine_type(&machine_type("hsw", &["cpu:haswell"])).await.unwrap();
        store.put_account(&account("node", "hsw")).await.unwrap();
        store.signing_key_or_insert(b"first key").await.unwrap()
    };
    let store = FileStore::open(&path).unwrap();
    assert_eq!(store.machine_type(&n("hsw")).await.unwrap(), Some(machine_type("hsw", &["cpu:haswell"])));
    assert_eq!(store.account(&l("node")).await.unwrap(), Some(account("node", "hsw")));
    assert_eq!(store.signing_key_or_insert(b"second key").await.unwrap(), key);
    assert_eq!(key, b"first key");
}

/// `metahub serve` and the admin CLI open one file at the same time: each sees the other's writes.
#[tokio::test]
async fn two_handles_share_one_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    let server = FileStore::open(&path).unwrap();
    assert_eq!(server.machine_type(&n("hsw")).await.unwrap(), None);
    let cli = FileStore::open(&path).unwrap();
    cli.put_machine_type(&machine_type("hsw", &["cpu:haswell"])).await.unwrap();
    cli.put_account(&account("node", "hsw")).await.unwrap();
    assert!(server.machine_type(&n("hsw")).await.unwrap().is_some(), "the server sees the CLI's commit");
    let e = server.delete_machine_type(&n("hsw")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(cli.delete_account(&l("node")).await.unwrap());
    assert!(server.delete_machine_type(&n("hsw")).await.unwrap());
    assert_eq!(cli.machine_type(&n("hsw")).await.unwrap(), None);
}

#[tokio::test]
async fn locked_file_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("store.redb");
    // A writer in redb's exclusive mode (another tool, or an old metahub) locks the whole file.
    let _exclusive = redb::Database::create(&path).unwrap();
    owner_only(&path);
    let e = FileStore::open(&path).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("in use by another metahub process") && e.message.contains("store.redb"), "{e}");
}

#[tokio::test]
async fn unusable_path_is_unavailable_naming_it() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = FileStore::open(&file.join("store.redb")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("a-file"), "{e}");

    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
    owner_only(&garbage);
    let e = FileStore::open(&garbage).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains("garbage.redb"), "{e}");
}

/// Files these tests write themselves are made owner-only, as `FileStore` demands of a store.
fn owner_only(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
