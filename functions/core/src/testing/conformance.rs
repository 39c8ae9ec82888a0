//! The conformance suite every [`Store`] adapter passes: the same scenarios, run against a fresh store each.
//!
//! An adapter's test implements [`Fixture`] and calls [`run_all`]; a failing scenario panics with its name.

use crate::filter::Platform;
use crate::machine::{MachineType, MachineTypeName, MatchMode};
use crate::names::Login;
use crate::ports::{Account, AccountChange, ChildRecord, Manifest, Store};
use crate::reference::{Digest, RepositoryName};
use crate::{Error, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// How the suite gets stores.
#[async_trait]
pub trait Fixture: Send + Sync {
    /// A fresh, empty store. It becomes the fixture's current store.
    async fn fresh(&self) -> Arc<dyn Store>;
    /// Writes, into the current store, a machine type item `name` that bypasses validation and is malformed (e.g. an
    /// unknown cpu feature), as an operator's hand-typed item could be.
    async fn put_malformed_machine_type(&self, name: &str);
}

pub fn machine_type(name: &str, features: &[&str]) -> MachineType {
    MachineType::new(name, features.iter().map(|f| f.to_string()).collect(), MatchMode::Best)
        .expect("valid machine type")
}

/// A machine type name the suite writes.
pub fn n(name: &str) -> MachineTypeName {
    name.parse().expect("a valid machine type name")
}

/// A login the suite writes.
pub fn l(login: &str) -> Login {
    login.parse().expect("a valid login")
}

pub fn account(login: &str, machine_type: &str) -> Account {
    Account {
        login: l(login),
        machine_type: n(machine_type),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${login}").into(),
        repositories: Vec::new(),
    }
}

/// Every scenario, in order, each on a fresh store.
pub async fn run_all(fixture: &dyn Fixture) {
    eprintln!("conformance: machine types");
    machine_types(fixture.fresh().await).await;
    eprintln!("conformance: accounts");
    accounts(fixture.fresh().await).await;
    eprintln!("conformance: delete refused naming the accounts");
    delete_refused_names_accounts(fixture.fresh().await).await;
    eprintln!("conformance: manifests");
    manifests(fixture.fresh().await).await;
    eprintln!("conformance: child records");
    child_records(fixture.fresh().await).await;
    eprintln!("conformance: signing key race");
    signing_key_race(fixture.fresh().await).await;
    eprintln!("conformance: concurrent machine type updates");
    concurrent_machine_type_updates(fixture.fresh().await).await;
    eprintln!("conformance: put_account vs delete_machine_type");
    put_account_vs_delete(fixture.fresh().await).await;
    eprintln!("conformance: one-field account changes");
    account_field_changes(fixture.fresh().await).await;
    eprintln!("conformance: password rotations racing a machine type move");
    rotations_race_a_move(fixture.fresh().await).await;
    eprintln!("conformance: watched images");
    watched_images(fixture.fresh().await).await;
    eprintln!("conformance: NVIDIA requirements");
    gpu_requirements(fixture.fresh().await).await;
    eprintln!("conformance: malformed machine type");
    malformed_machine_type(fixture).await;
    eprintln!("conformance: revoked sessions");
    revoked_sessions(fixture.fresh().await).await;
    eprintln!("conformance: allow-lists");
    allow_lists(fixture.fresh().await).await;
}

/// An allow-list as the store gives it back is matched on whole segments, after the upstream's naming rules
/// (here Docker Hub's: a one-segment name is `library/<name>`).
pub async fn allow_lists(store: Arc<dyn Store>) {
    store.put_machine_type(&MachineType::new(n("t"), vec![], MatchMode::Best).unwrap()).await.unwrap();
    let mut written = account("allowed", "t");
    written.repositories = vec!["nginx".into(), "org/app".into(), "team/".into()];
    store.put_account(&written).await.unwrap();
    let read = store.account(&l("allowed")).await.unwrap().unwrap();
    assert_eq!(read.repositories, written.repositories);
    let docker_hub =
        |name: &RepositoryName| if name.segments() == 1 { name.with_prefix("library") } else { name.clone() };
    for (repository, granted) in [
        ("nginx", true),
        ("library/nginx", true),
        ("nginx/app", false),
        ("org/app", true),
        ("org/app/sub", true),
        ("org/application", false),
        ("team/x", true),
        ("teams/x", false),
    ] {
        assert_eq!(read.may_pull_named(&repository.parse().unwrap(), &docker_hub), granted, "{repository}");
    }
}

pub async fn revoked_sessions(store: Arc<dyn Store>) {
    let until = crate::token::now_seconds() + 3600;
    assert!(!store.session_revoked("s1").await.unwrap());
    store.revoke_session("s1", until).await.unwrap();
    assert!(store.session_revoked("s1").await.unwrap());
    assert!(!store.session_revoked("s2").await.unwrap(), "another session stays valid");
    store.revoke_session("s1", until).await.unwrap();
    assert!(store.session_revoked("s1").await.unwrap(), "revoking twice is harmless");
}

pub async fn watched_images(store: Arc<dyn Store>) {
    assert!(store.watched_images().await.unwrap().is_empty());
    assert!(!store.unwatch_image("library/alpine:3").await.unwrap(), "removing an absent image is Ok(false)");
    assert!(store.watch_image("org/app:latest").await.unwrap());
    assert!(store.watch_image("ghcr.io/org/app:1.0").await.unwrap());
    assert!(!store.watch_image("org/app:latest").await.unwrap(), "watching twice is Ok(false), one entry");
    assert_eq!(store.watched_images().await.unwrap(), ["ghcr.io/org/app:1.0", "org/app:latest"], "sorted");
    assert!(store.unwatch_image("org/app:latest").await.unwrap());
    assert_eq!(store.watched_images().await.unwrap(), ["ghcr.io/org/app:1.0"]);
}

pub async fn machine_types(store: Arc<dyn Store>) {
    assert_eq!(store.machine_type(&n("skylake-v100")).await.unwrap(), None);
    assert!(store.list_machine_types().await.unwrap().is_empty());
    assert!(!store.delete_machine_type(&n("skylake-v100")).await.unwrap(), "deleting an absent type is Ok(false)");

    for (name, features) in
        [("zen3", vec!["cpu:zen3"]), ("skylake-v100", vec!["cpu:skylake", "nvcap:7.0"]), ("any", vec![])]
    {
        store.put_machine_type(&machine_type(name, &features)).await.unwrap();
    }
    let got = store.machine_type(&n("skylake-v100")).await.unwrap().unwrap();
    assert_eq!(got, machine_type("skylake-v100", &["cpu:skylake", "nvcap:7.0"]));
    assert!(store.machine_type(&n("any")).await.unwrap().unwrap().features.is_empty());

    // Replace, with another match mode and features in a given order.
    let mut exact = machine_type("skylake-v100", &["nvcap:7.0", "cpu:skylake", "fabric:efa"]);
    exact.match_mode = MatchMode::Exact;
    store.put_machine_type(&exact).await.unwrap();
    assert_eq!(store.machine_type(&n("skylake-v100")).await.unwrap().unwrap(), exact);

    let names: Vec<String> =
        store.list_machine_types().await.unwrap().into_iter().map(|m| m.name.to_string()).collect();
    assert_eq!(names, ["any", "skylake-v100", "zen3"], "sorted by name");

    assert!(store.delete_machine_type(&n("zen3")).await.unwrap());
    assert_eq!(store.machine_type(&n("zen3")).await.unwrap(), None);
    assert!(!store.delete_machine_type(&n("zen3")).await.unwrap());
    assert_eq!(store.list_machine_types().await.unwrap().len(), 2);
}

pub async fn accounts(store: Arc<dyn Store>) {
    assert_eq!(store.account(&l("node-1")).await.unwrap(), None);
    assert!(store.list_accounts().await.unwrap().is_empty());

    let e = store.put_account(&account("node-1", "missing-type")).await.unwrap_err();
    assert!(matches!(e.code, ErrorCode::NameUnknown | ErrorCode::Denied), "{e}");
    assert!(e.message.contains("missing-type"), "{e}");
    assert_eq!(store.account(&l("node-1")).await.unwrap(), None);

    store.put_machine_type(&machine_type("hsw", &["cpu:haswell"])).await.unwrap();
    store.put_machine_type(&machine_type("zen2", &["cpu:zen2"])).await.unwrap();
    for login in ["node-2", "node-1", "admin@site"] {
        store.put_account(&account(login, "hsw")).await.unwrap();
    }
    assert_eq!(store.account(&l("node-1")).await.unwrap().unwrap(), account("node-1", "hsw"));

    // Replace: another machine type and hash.
    let mut moved = account("node-1", "zen2");
    moved.password_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdA$other".into();
    store.put_account(&moved).await.unwrap();
    assert_eq!(store.account(&l("node-1")).await.unwrap().unwrap(), moved);

    // Repository prefixes round-trip, in order, and go away when replaced by an account without them.
    let mut limited = moved.clone();
    limited.repositories = vec!["org/".into(), "other/app".into()];
    store.put_account(&limited).await.unwrap();
    assert_eq!(store.account(&l("node-1")).await.unwrap().unwrap(), limited);
    assert_eq!(store.list_accounts().await.unwrap().iter().find(|a| a.login == "node-1"), Some(&limited));
    store.put_account(&moved).await.unwrap();
    assert_eq!(store.account(&l("node-1")).await.unwrap().unwrap(), moved);

    let logins: Vec<String> = store.list_accounts().await.unwrap().into_iter().map(|a| a.login.to_string()).collect();
    assert_eq!(logins, ["admin@site", "node-1", "node-2"], "sorted by login");

    // node-1 left hsw: hsw is still used by the two others, zen2 by node-1 only.
    let e = store.delete_machine_type(&n("hsw")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("admin@site") && e.message.contains("node-2") && !e.message.contains("node-1"), "{e}");

    assert!(store.delete_account(&l("node-1")).await.unwrap());
    assert!(!store.delete_account(&l("node-1")).await.unwrap());
    assert_eq!(store.account(&l("node-1")).await.unwrap(), None);
    assert!(store.delete_machine_type(&n("zen2")).await.unwrap(), "zen2 has no account left");
    assert_eq!(store.list_accounts().await.unwrap().len(), 2);
}

pub async fn delete_refused_names_accounts(store: Arc<dyn Store>) {
    store.put_machine_type(&machine_type("gpu-box", &["cpu:cascadelake", "nvcap:7.5"])).await.unwrap();
    for login in ["zed", "amy", "mia"] {
        store.put_account(&account(login, "gpu-box")).await.unwrap();
    }
    let e: Error = store.delete_machine_type(&n("gpu-box")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    let (amy, mia, zed) = (e.message.find("amy"), e.message.find("mia"), e.message.find("zed"));
    assert!(amy.is_some() && amy < mia && mia < zed, "accounts named, sorted: {e}");
    let detail = e.detail.clone().expect("detail");
    assert_eq!(detail["accounts"], serde_json::json!(["amy", "mia", "zed"]), "{detail}");
    assert!(store.machine_type(&n("gpu-box")).await.unwrap().is_some(), "not deleted");

    for login in ["zed", "amy", "mia"] {
        assert!(store.delete_account(&l(login)).await.unwrap());
    }
    assert!(store.delete_machine_type(&n("gpu-box")).await.unwrap());
}

pub async fn manifests(store: Arc<dyn Store>) {
    let repo: RepositoryName = "org/image".parse().unwrap();
    let other: RepositoryName = "org/other".parse().unwrap();
    let bytes = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    );
    let manifest = Manifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        bytes: bytes.clone(),
    };
    assert_eq!(store.generated_manifest(&repo, &manifest.digest).await.unwrap(), None);
    store.put_generated_manifest(&repo, &manifest).await.unwrap();
    store.put_generated_manifest(&repo, &manifest).await.unwrap(); // idempotent
    assert_eq!(store.generated_manifest(&repo, &manifest.digest).await.unwrap(), Some(manifest.clone()));
    assert_eq!(store.generated_manifest(&other, &manifest.digest).await.unwrap(), None, "keyed by repository too");

    // A big index (hundreds of entries) round-trips byte for byte.
    let big = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(200_000)));
    let big = Manifest { digest: Digest::sha256_of(&big), media_type: "application/json".into(), bytes: big };
    store.put_generated_manifest(&other, &big).await.unwrap();
    assert_eq!(store.generated_manifest(&other, &big.digest).await.unwrap(), Some(big));

    let lying = Manifest { digest: Digest::sha256_of(b"something else"), ..manifest };
    assert!(store.put_generated_manifest(&repo, &lying).await.is_err(), "stored only under its own digest");
}

pub async fn child_records(store: Arc<dyn Store>) {
    let repo: RepositoryName = "org/image".parse().unwrap();
    let other: RepositoryName = "org/other".parse().unwrap();
    let (index, later) = (Digest::sha256_of(b"index"), Digest::sha256_of(b"later index"));
    let record = |child: &[u8], variant: &str, features: &[&str], index: &Digest| ChildRecord {
        digest: Digest::sha256_of(child),
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: variant.into(),
            features: features.iter().map(|f| f.to_string()).collect(),
        },
        index: index.clone(),
    };
    let (zen3, generic) = (record(b"zen3", "v3", &["cpu:zen3"], &index), record(b"generic", "", &[], &index));
    assert_eq!(store.child_record(&repo, &zen3.digest).await.unwrap(), None);
    store.put_child_records(&repo, &[]).await.unwrap();
    store.put_child_records(&repo, &[zen3.clone(), generic.clone()]).await.unwrap();
    assert_eq!(store.child_record(&repo, &zen3.digest).await.unwrap(), Some(zen3.clone()));
    assert_eq!(store.child_record(&repo, &generic.digest).await.unwrap(), Some(generic));
    assert_eq!(store.child_record(&other, &zen3.digest).await.unwrap(), None, "keyed by repository too");
    // the same child read again in another index: the later record counts
    let again = record(b"zen3", "v3", &["cpu:zen3"], &later);
    store.put_child_records(&repo, std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(store.child_record(&repo, &zen3.digest).await.unwrap(), Some(again));
    // a record is not a generated manifest: a pull of that digest is never answered from it
    assert_eq!(store.generated_manifest(&repo, &zen3.digest).await.unwrap(), None);
    // many children at once (an index of a hundred builds)
    let many: Vec<ChildRecord> = (0..100u32).map(|i| record(&i.to_be_bytes(), "", &["fabric:efa"], &index)).collect();
    store.put_child_records(&other, &many).await.unwrap();
    assert_eq!(store.child_record(&other, &many[99].digest).await.unwrap(), Some(many[99].clone()));
}

pub async fn gpu_requirements(store: Arc<dyn Store>) {
    use crate::nvidia::Requirements;
    let child = Digest::sha256_of(b"a child manifest");
    assert_eq!(store.gpu_requirements(&child).await.unwrap(), None);
    let long = format!("cuda>=12.4 {}", "brand=tesla,driver>=535,driver<536 ".repeat(60));
    let requirements = Requirements { expressions: vec![long, "brand=tesla".into()] };
    store.put_gpu_requirements(&child, &requirements).await.unwrap();
    store.put_gpu_requirements(&child, &requirements).await.unwrap(); // idempotent
    assert_eq!(store.gpu_requirements(&child).await.unwrap(), Some(requirements));
    // "none" is kept too: a config without NVIDIA_REQUIRE_* is read once
    let plain = Digest::sha256_of(b"a plain child");
    store.put_gpu_requirements(&plain, &Requirements::default()).await.unwrap();
    assert_eq!(store.gpu_requirements(&plain).await.unwrap(), Some(Requirements::default()));
}

pub async fn signing_key_race(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..24u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.signing_key_or_insert(&[i; 32]).await.unwrap() })
        })
        .collect();
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    let first = keys[0].clone();
    assert!(keys.iter().all(|k| *k == first), "every task got the same key");
    assert!(first.len() == 32 && first.iter().all(|b| *b == first[0]) && first[0] < 24, "one of the candidates");
    assert_eq!(store.signing_key_or_insert(&[99; 32]).await.unwrap(), first, "later callers get the stored key");
}

pub async fn concurrent_machine_type_updates(store: Arc<dyn Store>) {
    // Many tasks rewrite one machine type, and each writes one of its own: no error, no lost write.
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let shared = machine_type("shared", &["cpu:skylake", &format!("nvcap:{i}.0")]);
                store.put_machine_type(&shared).await.unwrap();
                store.put_machine_type(&machine_type(&format!("own-{i:02}"), &["cpu:haswell"])).await.unwrap();
                store.put_machine_type(&shared).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let shared = store.machine_type(&n("shared")).await.unwrap().unwrap();
    assert_eq!(shared.features.len(), 2);
    assert!((0..16).any(|i| shared.features.texts()[1] == format!("nvcap:{i}.0")), "{shared:?}");
    let names: Vec<String> =
        store.list_machine_types().await.unwrap().into_iter().map(|m| m.name.to_string()).collect();
    let mut expected: Vec<String> = (0..16).map(|i| format!("own-{i:02}")).collect();
    expected.push("shared".into());
    assert_eq!(names, expected);
}

/// `update_account` changes the one field it names, refuses a missing machine type, and says when there is no account.
pub async fn account_field_changes(store: Arc<dyn Store>) {
    for mt in ["from", "to"] {
        store.put_machine_type(&machine_type(mt, &["cpu:zen3"])).await.unwrap();
    }
    let mut original = account("mover", "from");
    original.repositories = vec!["org/".into()];
    store.put_account(&original).await.unwrap();
    let rotated = AccountChange::PasswordHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$rotated".into());
    assert_eq!(store.update_account(&l("nobody"), &rotated).await.unwrap(), None, "no account: None, nothing created");
    assert_eq!(store.account(&l("nobody")).await.unwrap(), None);

    let after = store.update_account(&l("mover"), &rotated).await.unwrap().expect("the account");
    assert_eq!(after.machine_type, "from");
    assert_eq!(after.repositories, original.repositories);
    let moved = store.update_account(&l("mover"), &AccountChange::MachineType(n("to"))).await.unwrap().unwrap();
    assert_eq!(moved.machine_type, "to");
    let stored = store.account(&l("mover")).await.unwrap().unwrap();
    assert_eq!(stored, Account { machine_type: n("to"), ..after.clone() }, "the rotated password stayed");

    let e = store.update_account(&l("mover"), &AccountChange::MachineType(n("absent"))).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NameUnknown, "{e}");
    assert_eq!(store.account(&l("mover")).await.unwrap().unwrap().machine_type, "to", "unchanged after the refusal");
    // the move is seen by the in-use check: the old type is free, the new one is not
    assert!(store.delete_machine_type(&n("from")).await.unwrap());
    let e = store.delete_machine_type(&n("to")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
}

/// Password rotations running while the account moves to another machine type never put the old type back (what a
/// read-modify-write of the whole account did), and the last rotation's hash is kept.
pub async fn rotations_race_a_move(store: Arc<dyn Store>) {
    for mt in ["old-type", "new-type"] {
        store.put_machine_type(&machine_type(mt, &["cpu:zen3"])).await.unwrap();
    }
    store.put_account(&account("racer", "old-type")).await.unwrap();
    let hash = |i: u64| format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$rotation{i}");
    let rotations: Vec<_> = (0..12u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i)).await;
                store.update_account(&l("racer"), &AccountChange::PasswordHash(hash(i).into())).await.unwrap().unwrap();
            })
        })
        .collect();
    let mover = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            store.update_account(&l("racer"), &AccountChange::MachineType(n("new-type"))).await.unwrap().unwrap();
        })
    };
    for r in rotations {
        r.await.unwrap();
    }
    mover.await.unwrap();
    let stored = store.account(&l("racer")).await.unwrap().unwrap();
    assert_eq!(stored.machine_type, "new-type", "a rotation reverted the move");
    assert!(
        (0..12).any(|i| stored.password_hash.expose_str() == hash(i)),
        "one of the rotations' hashes: {:?}",
        stored.password_hash.expose_str()
    );
    let after =
        store.update_account(&l("racer"), &AccountChange::PasswordHash(hash(99).into())).await.unwrap().unwrap();
    assert_eq!((after.machine_type.as_str(), after.password_hash.expose_str()), ("new-type", hash(99).as_str()));
}

pub async fn put_account_vs_delete(store: Arc<dyn Store>) {
    for round in 0..6u64 {
        let mt = format!("racy-{round}");
        store.put_machine_type(&machine_type(&mt, &["cpu:zen3"])).await.unwrap();
        // Staggered so that across rounds the delete lands before, among and after the puts.
        let deleter = {
            let (store, mt) = (store.clone(), mt.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(round * 4)).await;
                for _ in 0..20 {
                    match store.delete_machine_type(&n(&mt)).await {
                        Ok(true) => return true,
                        Ok(false) => panic!("machine type vanished"),
                        Err(e) if e.code == ErrorCode::Denied => tokio::task::yield_now().await,
                        Err(e) => panic!("delete_machine_type failed: {e}"),
                    }
                }
                false
            })
        };
        let puts: Vec<_> = (0..8u64)
            .map(|i| {
                let (store, mt) = (store.clone(), mt.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2 + 2 * i)).await;
                    match store.put_account(&account(&format!("r{round}-{i}"), &mt)).await {
                        Ok(()) => true,
                        Err(e) if matches!(e.code, ErrorCode::NameUnknown | ErrorCode::Denied) => false,
                        Err(e) => panic!("put_account failed: {e}"),
                    }
                })
            })
            .collect();
        let mut stored = 0;
        for p in puts {
            stored += usize::from(p.await.unwrap());
        }
        let deleted = deleter.await.unwrap();
        eprintln!("  round {round}: {stored} account(s) stored, type deleted: {deleted}");
        let left = store.list_accounts().await.unwrap();
        let on_mt = left.iter().filter(|a| a.machine_type == mt).count();
        let exists = store.machine_type(&n(&mt)).await.unwrap().is_some();
        assert_eq!(exists, !deleted);
        assert_eq!(on_mt, stored, "round {round}: every successful put_account is there");
        if deleted {
            assert_eq!(on_mt, 0, "round {round}: an account points at deleted type {mt}: {left:?}");
        }
        for a in left {
            assert!(store.delete_account(&a.login).await.unwrap());
        }
        store.delete_machine_type(&n(&mt)).await.unwrap();
    }
}

pub async fn malformed_machine_type(fixture: &dyn Fixture) {
    let store = fixture.fresh().await;
    store.put_machine_type(&machine_type("fine", &["cpu:haswell"])).await.unwrap();
    fixture.put_malformed_machine_type("broken-type").await;
    let e = store.machine_type(&n("broken-type")).await.unwrap_err();
    assert!(e.message.contains("broken-type"), "names the item: {e}");
    assert_ne!(e.code, ErrorCode::Unavailable, "{e}");
    let e = store.list_machine_types().await.unwrap_err();
    assert!(e.message.contains("broken-type"), "names the item: {e}");
    assert!(store.machine_type(&n("fine")).await.unwrap().is_some(), "other items still read");
    // And it can be repaired by writing it again.
    store.put_machine_type(&machine_type("broken-type", &["cpu:zen2"])).await.unwrap();
    assert_eq!(store.list_machine_types().await.unwrap().len(), 2);
}
