//! The pull flow over the in-memory store and the scripted, call-counting upstream of [`crate::testing`].

use super::*;
use crate::machine::MatchMode;
use crate::observe::{Cache, Record};
use crate::testing::{FAKE_STORAGE, FakeUpstream, MemoryStore};
use std::time::Duration;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"amd64"}},
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"amd64","features":["cpu:haswell"]}}]}"#;
const IMAGE: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;

/// `org/app:latest` is [`INDEX`]; `org/app:single` is a plain image manifest.
fn upstream() -> Arc<FakeUpstream> {
    let upstream = Arc::new(FakeUpstream::default());
    upstream.tag("org/app", "latest", filter::OCI_INDEX, INDEX);
    upstream.tag("org/app", "single", filter::OCI_MANIFEST, IMAGE);
    upstream
}

/// A machine type name, as a token carries it.
fn mt(name: &str) -> MachineTypeName {
    name.parse().unwrap()
}

async fn machine_types() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    for (name, features) in [("zen2", vec!["cpu:zen2"]), ("hsw", vec!["cpu:haswell"]), ("plain", vec![])] {
        let features = features.into_iter().map(String::from).collect();
        store.put_machine_type(&MachineType::new(name, features, MatchMode::Best).unwrap()).await.unwrap();
    }
    store
}

async fn new_service(upstream: Arc<FakeUpstream>, options: CacheOptions) -> (RegistryService, Arc<MemoryStore>) {
    let store = machine_types().await;
    (RegistryService::new(store.clone(), upstream, options), store)
}

/// The tag window off (`--tag-ttl 0`): every tag pull asks upstream, as these tests count.
fn window_off() -> CacheOptions {
    CacheOptions { tag_ttl: None, ..CacheOptions::default() }
}

fn app() -> (RepositoryName, Reference) {
    ("org/app".parse().unwrap(), "latest".parse().unwrap())
}

fn by_digest(digest: &Digest) -> Reference {
    Reference::Digest(digest.clone())
}

#[tokio::test]
async fn a_generic_head_content_type_does_not_bypass_filtering() {
    for head_type in ["application/json", "", "text/plain", filter::OCI_INDEX] {
        let upstream = upstream();
        upstream.set_head_media_type(head_type);
        let (service, _) = new_service(upstream.clone(), CacheOptions::default()).await;
        let (repo, tag) = app();
        let served = service.manifest(&repo, &tag, &mt("zen2")).await.unwrap();
        assert_ne!(served.digest, Digest::sha256_of(INDEX.as_bytes()), "HEAD said {head_type:?}: filtered");
        assert!(!String::from_utf8_lossy(&served.bytes).contains("cpu:haswell"), "a zen2 runs no haswell build");
    }
}

#[tokio::test]
async fn every_tag_pull_asks_upstream_but_fetches_an_index_once() {
    let upstream = upstream();
    let (service, store) = new_service(upstream.clone(), window_off()).await;
    let (repo, tag) = app();
    let first = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    let second = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    assert_eq!(first, second);
    // One GET of the immutable index, and one of each child (for its config's NVIDIA requirements; these children
    // are not served, so they count as having none), once.
    assert_eq!((upstream.heads(), upstream.gets()), (2, 3), "a HEAD per pull, one GET of the index and its children");
    assert!(first.digest.verifies(&first.bytes));
    let stored = store.generated_manifest(&repo, &first.digest).await.unwrap();
    assert_eq!(stored, Some(first), "the filtered index is stored, to be served by its digest");
}

#[tokio::test]
async fn stale_serving_is_keyed_by_features_and_bounded_in_age() {
    let upstream = upstream();
    let (service, store) = new_service(upstream.clone(), window_off()).await;
    let (repo, tag) = app();
    let fresh = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    upstream.set_down(true);
    assert_eq!(service.manifest(&repo, &tag, &mt("hsw")).await.unwrap(), fresh, "served stale");
    // the machine type's features change while the upstream is down: the old index does not fit it any more
    store.put_machine_type(&MachineType::new("hsw", vec!["cpu:zen2".into()], MatchMode::Best).unwrap()).await.unwrap();
    let e = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);

    let options = CacheOptions { max_stale: Duration::ZERO, ..window_off() };
    let (service, _) = new_service(upstream.clone(), options).await;
    upstream.set_down(false);
    service.manifest(&repo, &tag, &mt("zen2")).await.unwrap();
    upstream.set_down(true);
    std::thread::sleep(Duration::from_millis(2));
    let e = service.manifest(&repo, &tag, &mt("zen2")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "older than max_stale: not served");
}

#[tokio::test]
async fn a_digest_announced_but_not_served_is_the_upstreams_fault() {
    let upstream = upstream();
    let (service, _) = new_service(upstream.clone(), CacheOptions::default()).await;
    let (repo, tag) = app();
    upstream.stop_serving(&Digest::sha256_of(INDEX.as_bytes()));
    let e = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadGateway, "{e}");
    assert!(e.message.contains("announced") && e.message.contains("org/app:latest"), "{e}");

    // With an index served before, the stale fallback covers it as it covers an upstream that is down.
    let upstream = self::upstream();
    let (service, _) = new_service(upstream.clone(), window_off()).await;
    let fresh = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    let moved = upstream.tag("org/app", "latest", filter::OCI_INDEX, INDEX.replace("2222", "3333"));
    upstream.stop_serving(&moved.digest);
    assert_eq!(service.manifest(&repo, &tag, &mt("hsw")).await.unwrap(), fresh, "served stale");
}

#[tokio::test]
async fn an_unknown_tag_or_digest_is_manifest_unknown() {
    let (service, _) = new_service(upstream(), CacheOptions::default()).await;
    let (repo, _) = app();
    for reference in [Reference::Tag("nope".parse().unwrap()), by_digest(&Digest::sha256_of(b"nothing"))] {
        let e = service.manifest(&repo, &reference, &mt("hsw")).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ManifestUnknown, "{reference}: {e}");
    }
}

#[tokio::test]
async fn a_single_manifest_passes_through_verbatim() {
    let (service, store) = new_service(upstream(), CacheOptions::default()).await;
    let (repo, _) = app();
    let served = service.manifest(&repo, &"single".parse().unwrap(), &mt("hsw")).await.unwrap();
    assert_eq!((served.digest, &served.bytes[..]), (Digest::sha256_of(IMAGE.as_bytes()), IMAGE.as_bytes()));
    assert_eq!(store.generated_count(), 0);
}

#[tokio::test]
async fn a_filtered_index_is_served_by_its_digest_from_any_instance() {
    let upstream = upstream();
    let (service, store) = new_service(upstream.clone(), CacheOptions::default()).await;
    let (repo, tag) = app();
    let filtered = service.manifest(&repo, &tag, &mt("zen2")).await.unwrap();
    assert_eq!(service.manifest(&repo, &by_digest(&filtered.digest), &mt("zen2")).await.unwrap(), filtered);

    // Another instance (a cold Lambda) has only the shared store; the upstream never had this digest.
    let other = RegistryService::new(store.clone(), upstream.clone(), CacheOptions::default());
    let gets = upstream.gets();
    assert_eq!(other.manifest(&repo, &by_digest(&filtered.digest), &mt("hsw")).await.unwrap(), filtered);
    assert_eq!(upstream.gets(), gets, "read from the store, not asked upstream");
    let elsewhere: RepositoryName = "org/other".parse().unwrap();
    let e = other.manifest(&elsewhere, &by_digest(&filtered.digest), &mt("zen2")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestUnknown, "generated digests are per repository");
}

#[tokio::test]
async fn upstream_digests_are_served_verbatim_or_refused_by_setting() {
    let index = Digest::sha256_of(INDEX.as_bytes());
    let image = Digest::sha256_of(IMAGE.as_bytes());
    let (repo, _) = app();
    let (service, _) = new_service(upstream(), CacheOptions::default()).await;
    for digest in [&index, &image] {
        let served = service.manifest(&repo, &by_digest(digest), &mt("zen2")).await.unwrap();
        assert_eq!(served.digest, *digest, "verbatim by default");
    }

    let refusing = RegistryService::new(machine_types().await, upstream(), CacheOptions::default())
        .with_index_digest_pulls(IndexDigestPulls::Refuse);
    let e = refusing.manifest(&repo, &by_digest(&index), &mt("zen2")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    let detail = e.detail.unwrap();
    assert_eq!(detail["pullInstead"], serde_json::json!([format!("org/app@sha256:{}", "1".repeat(64))]));
    // Not an index: nothing to filter. An index that filtering leaves unchanged for the machine: served as is.
    assert_eq!(refusing.manifest(&repo, &by_digest(&image), &mt("zen2")).await.unwrap().digest, image);
    let generic_only = Arc::new(FakeUpstream::default());
    let only = INDEX.split_once(",\n{").map(|(first, _)| format!("{first}]}}")).unwrap();
    let only = generic_only.put(filter::OCI_INDEX, only);
    let refusing = RegistryService::new(machine_types().await, generic_only, CacheOptions::default())
        .with_index_digest_pulls(IndexDigestPulls::Refuse);
    assert_eq!(refusing.manifest(&repo, &by_digest(&only.digest), &mt("zen2")).await.unwrap(), only);
}

#[tokio::test]
async fn blobs_redirect_to_the_upstreams_storage() {
    let upstream = upstream();
    let (service, _) = new_service(upstream.clone(), CacheOptions::default()).await;
    let (repo, _) = app();
    let blob = upstream.blob(b"layer");
    assert_eq!(service.blob(&repo, &blob).await.unwrap().url, format!("{FAKE_STORAGE}/org/app/{blob}"));
    let e = service.blob(&repo, &Digest::sha256_of(b"absent")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BlobUnknown);
}

#[tokio::test]
async fn caches_stay_within_their_byte_budget() {
    let options = CacheOptions { max_bytes: 6 * 4096, ..CacheOptions::default() };
    let (service, _) = new_service(upstream(), options).await;
    let (repo, tag) = app();
    service.manifest(&repo, &tag, &mt("zen2")).await.unwrap();
    service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    assert!(service.cache.derived_weights().iter().all(|w| *w <= 4096), "{:?}", service.cache.derived_weights());
}

/// A pull, with what its request's record noted.
async fn pull(
    service: &RegistryService,
    repository: &RepositoryName,
    reference: &Reference,
    machine_type: &str,
) -> (Manifest, Record) {
    let (served, record) = observe::record(service.manifest(repository, reference, &mt(machine_type))).await;
    (served.unwrap(), record)
}

#[tokio::test]
async fn each_pull_path_notes_its_answer_cache_lookups_and_upstream_calls() {
    let upstream = upstream();
    let (service, store) = new_service(upstream.clone(), window_off()).await;
    let (repo, tag) = app();
    let (filtered, first) = pull(&service, &repo, &tag, "zen2").await;
    assert_eq!(first.answer, Some(Answer::Filtered));
    // the index, then each child (read once for its config's NVIDIA requirements; these two are not served)
    assert_eq!(
        first.cache,
        [(Cache::Filtered, false), (Cache::Manifest, false), (Cache::Manifest, false), (Cache::Manifest, false)]
    );
    assert_eq!(first.upstream_summary(), "head:ok get:ok get:MANIFEST_UNKNOWN get:MANIFEST_UNKNOWN");

    let (again, second) = pull(&service, &repo, &tag, "zen2").await;
    assert_eq!(again, filtered);
    assert_eq!(
        (second.answer, &second.cache[..], second.upstream_summary()),
        (first.answer, &[(Cache::Filtered, true)][..], "head:ok".into())
    );

    // By digest: the generated index and the upstream's are both answered from memory, without a call.
    let index = Digest::sha256_of(INDEX.as_bytes());
    for (digest, answer) in [(&filtered.digest, Answer::Generated), (&index, Answer::Verbatim)] {
        let (served, record) = pull(&service, &repo, &by_digest(digest), "zen2").await;
        assert_eq!(served.digest, *digest);
        assert_eq!(
            (record.answer, &record.cache[..], record.upstream_summary()),
            (Some(answer), &[(Cache::Manifest, true)][..], String::new())
        );
    }

    // Another instance reads the generated index from the store once, then keeps it.
    let other = RegistryService::new(store, upstream.clone(), window_off());
    let (served, cold) = pull(&other, &repo, &by_digest(&filtered.digest), "zen2").await;
    assert_eq!((served, cold.answer, cold.cache.len()), (filtered.clone(), Some(Answer::Generated), 0));
    let (_, warm) = pull(&other, &repo, &by_digest(&filtered.digest), "zen2").await;
    assert_eq!(warm.cache, [(Cache::Manifest, true)]);

    upstream.set_down(true);
    let (stale, down) = pull(&service, &repo, &tag, "zen2").await;
    assert_eq!(
        (stale, down.answer, down.upstream_summary()),
        (filtered, Some(Answer::Stale), "head:UNAVAILABLE".into())
    );
}

#[tokio::test]
async fn an_index_filtering_leaves_whole_is_served_as_the_upstreams_and_not_stored() {
    let upstream = Arc::new(FakeUpstream::default());
    let generic_only = INDEX.split_once(",\n{").map(|(first, _)| format!("{first}]}}")).unwrap();
    let index = upstream.tag("org/app", "latest", filter::OCI_INDEX, generic_only);
    let (service, store) = new_service(upstream.clone(), CacheOptions::default()).await;
    let (repo, tag) = app();
    let (served, record) = pull(&service, &repo, &tag, "zen2").await;
    assert_eq!((served, record.answer), (index.clone(), Some(Answer::Verbatim)));
    assert_eq!(store.generated_count(), 0, "the upstream serves it by its digest");
    // containerd follows a verbatim answer up by digest: from memory.
    let (served, record) = pull(&service, &repo, &by_digest(&index.digest), "zen2").await;
    assert_eq!((served, record.upstream_summary()), (index, String::new()));
}

#[tokio::test]
async fn stale_serving_covers_only_what_was_served_fresh() {
    let upstream = upstream();
    let (service, _) = new_service(upstream.clone(), window_off()).await;
    let (repo, tag) = app();
    let fresh = service.manifest(&repo, &tag, &mt("hsw")).await.unwrap();
    upstream.set_down(true);
    assert_eq!(service.manifest(&repo, &tag, &mt("hsw")).await.unwrap(), fresh);
    for (reference, machine_type) in [("latest", "zen2"), ("single", "hsw")] {
        let e = service.manifest(&repo, &reference.parse().unwrap(), &mt(machine_type)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{reference} was never served to {machine_type}");
    }
    // By digest there is nothing stale to serve: the generated index is in memory, an upstream digest is not.
    let e = service.manifest(&repo, &by_digest(&Digest::sha256_of(IMAGE.as_bytes())), &mt("hsw")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert_eq!(service.manifest(&repo, &by_digest(&fresh.digest), &mt("hsw")).await.unwrap(), fresh);
}

/// Never a build the machine cannot run (issue 25): the issue's fixture — generic, broadwell, skylake,
/// skylake+V100, zen3 and arm64 builds, all under the plain platform with features.
mod pins {
    use super::*;

    fn build(n: u8, arch: &str, features: &[&str]) -> String {
        let features = serde_json::to_string(features).unwrap();
        format!(
            r#"{{"mediaType":"{}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"{arch}","features":{features}}}}}"#,
            filter::OCI_MANIFEST,
            n.to_string().repeat(64)
        )
    }

    fn child(n: u8) -> Digest {
        format!("sha256:{}", n.to_string().repeat(64)).parse().unwrap()
    }

    fn index(builds: &[String]) -> String {
        format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#, filter::OCI_INDEX, builds.join(","))
    }

    const GENERIC: u8 = 1;
    const BROADWELL: u8 = 2;
    const SKYLAKE: u8 = 3;
    const V100: u8 = 4;
    const ZEN3: u8 = 5;

    fn fixture() -> String {
        index(&[
            build(GENERIC, "amd64", &[]),
            build(BROADWELL, "amd64", &["cpu:broadwell"]),
            build(SKYLAKE, "amd64", &["cpu:skylake"]),
            build(V100, "amd64", &["cpu:skylake", "nvcap:7.0"]),
            build(ZEN3, "amd64", &["cpu:zen3"]),
            build(6, "arm64", &[]),
        ])
    }

    async fn service(upstream: Arc<FakeUpstream>) -> (RegistryService, Arc<MemoryStore>) {
        service_with(upstream, window_off()).await
    }

    async fn service_with(upstream: Arc<FakeUpstream>, options: CacheOptions) -> (RegistryService, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::default());
        let types: &[(&str, &[&str], MatchMode)] = &[
            ("zen2", &["cpu:zen2"], MatchMode::Best),
            ("zen4", &["cpu:zen4"], MatchMode::Best),
            ("haswell", &["cpu:haswell"], MatchMode::Best),
            ("broadwell", &["cpu:broadwell"], MatchMode::Best),
            ("clx", &["cpu:cascadelake"], MatchMode::Best),
            ("skl-v100", &["cpu:skylake", "nvcap:7.0"], MatchMode::Best),
            ("graviton", &["cpu:neoverse_v1"], MatchMode::Best),
            ("resolver", &[], MatchMode::Unfiltered),
        ];
        for (name, features, mode) in types {
            let features = features.iter().map(|f| f.to_string()).collect();
            store.put_machine_type(&MachineType::new(name, features, *mode).unwrap()).await.unwrap();
        }
        (RegistryService::new(store.clone(), upstream, options), store)
    }

    fn fixture_upstream() -> Arc<FakeUpstream> {
        let upstream = Arc::new(FakeUpstream::default());
        upstream.tag("org/app", "latest", filter::OCI_INDEX, fixture());
        upstream
    }

    /// The digest `resolver` was served by tag.
    async fn resolved(service: &RegistryService, resolver: &str) -> Digest {
        let (repo, tag) = app();
        service.manifest(&repo, &tag, &mt(resolver)).await.unwrap().digest
    }

    async fn pin(service: &RegistryService, digest: &Digest, machine_type: &str) -> Result<Manifest> {
        service.manifest(&app().0, &by_digest(digest), &mt(machine_type)).await
    }

    #[tokio::test]
    async fn another_types_digest_is_served_only_when_the_machine_runs_it() {
        let (service, _) = service(fixture_upstream()).await;
        let zen4 = resolved(&service, "zen4").await;
        let e = pin(&service, &zen4, "zen2").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Denied, "{e}");
        assert!(e.message.contains("cpu:zen3") && e.message.contains("\"zen2\""), "{e}");
        // the refusal names zen2's own build: the generic one
        assert_eq!(e.detail.unwrap()["pullInstead"], serde_json::json!([format!("org/app@{}", child(GENERIC))]));

        let v100 = resolved(&service, "skl-v100").await;
        assert_eq!(pin(&service, &v100, "broadwell").await.unwrap_err().code, ErrorCode::Denied);
        let broadwell = resolved(&service, "broadwell").await;
        assert_eq!(pin(&service, &broadwell, "haswell").await.unwrap_err().code, ErrorCode::Denied);
        // safe pins keep working: a cascadelake runs broadwell; zen4 runs its own; arm64 gets its platform's entry
        assert_eq!(pin(&service, &broadwell, "clx").await.unwrap().digest, broadwell);
        assert_eq!(pin(&service, &zen4, "zen4").await.unwrap().digest, zen4);
        assert_eq!(pin(&service, &zen4, "graviton").await.unwrap().digest, zen4, "its arm64 entry is generic");
        // HEAD answers the same (the transports HEAD through the same manifest call)
    }

    #[tokio::test]
    async fn child_digests_are_judged_by_what_the_index_lists_them_as() {
        let upstream = fixture_upstream();
        for (n, bytes) in [(SKYLAKE, "skylake"), (GENERIC, "generic"), (ZEN3, "zen3")] {
            upstream.put_at(child(n), filter::OCI_MANIFEST, IMAGE.replace("{}", &format!(r#"{{"b":"{bytes}"}}"#)));
        }
        let (service, store) = service(upstream.clone()).await;
        // never read: served (nothing tells what it requires)
        assert!(pin(&service, &child(SKYLAKE), "zen2").await.is_ok());
        resolved(&service, "clx").await; // reads the index
        let e = pin(&service, &child(SKYLAKE), "zen2").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Denied, "{e}");
        assert!(e.message.contains("cpu:skylake"), "{e}");
        assert!(pin(&service, &child(SKYLAKE), "clx").await.is_ok());
        assert!(pin(&service, &child(GENERIC), "zen2").await.is_ok());

        // another instance knows it from the store alone, without asking upstream more than for the child itself
        let other = RegistryService::new(store, upstream.clone(), CacheOptions::default());
        let gets = upstream.gets();
        assert_eq!(pin(&other, &child(ZEN3), "haswell").await.unwrap_err().code, ErrorCode::Denied);
        assert!(upstream.gets() <= gets + 2, "the child, and the index for the refusal's suggestion");
    }

    #[tokio::test]
    async fn the_upstream_index_is_served_when_the_first_plain_entry_runs() {
        let upstream = Arc::new(FakeUpstream::default());
        let generic_first = upstream.put(filter::OCI_INDEX, fixture());
        let skylake_first = upstream
            .put(filter::OCI_INDEX, index(&[build(SKYLAKE, "amd64", &["cpu:skylake"]), build(GENERIC, "amd64", &[])]));
        let (service, _) = service(upstream).await;
        assert!(pin(&service, &generic_first.digest, "zen2").await.is_ok());
        let e = pin(&service, &skylake_first.digest, "zen2").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Denied, "{e}");
        assert_eq!(e.detail.unwrap()["pullInstead"], serde_json::json!([format!("org/app@{}", child(GENERIC))]));
        assert!(pin(&service, &skylake_first.digest, "clx").await.is_ok());
        assert!(pin(&service, &skylake_first.digest, "graviton").await.is_ok(), "no arm64 entry: nothing to take");
    }

    #[tokio::test]
    async fn a_resolver_gets_the_whole_index_and_its_digest_is_judged_per_node() {
        let (service, _) = service(fixture_upstream()).await;
        let whole = resolved(&service, "resolver").await;
        assert_eq!(whole, Digest::sha256_of(fixture().as_bytes()), "by tag: the upstream digest");
        for node in ["zen2", "haswell", "clx", "graviton"] {
            assert!(pin(&service, &whole, node).await.is_ok(), "{node}: the generic entry comes first");
        }
        let zen4 = resolved(&service, "zen4").await;
        assert!(pin(&service, &zen4, "resolver").await.is_ok(), "a resolver reads any digest");
    }

    #[tokio::test]
    async fn a_warm_pull_asks_upstream_no_more_than_before() {
        let upstream = fixture_upstream();
        upstream.put_at(child(SKYLAKE), filter::OCI_MANIFEST, IMAGE);
        let (service, _) = service(upstream.clone()).await;
        // containerd's pull as clx: HEAD the tag, GET the filtered index by its digest, GET the child
        let containerd = || async {
            let filtered = resolved(&service, "clx").await;
            pin(&service, &filtered, "clx").await.unwrap();
            pin(&service, &child(SKYLAKE), "clx").await.unwrap();
        };
        containerd().await;
        let (heads, gets) = (upstream.heads(), upstream.gets());
        containerd().await;
        assert_eq!((upstream.heads() - heads, upstream.gets() - gets), (1, 0), "one HEAD of the tag, nothing else");
        // and with the tag window, not even that
        let (windowed, _) = service_with(upstream.clone(), CacheOptions::default()).await;
        let (_, tag) = app();
        windowed.manifest(&app().0, &tag, &mt("clx")).await.unwrap();
        let heads = upstream.heads();
        windowed.manifest(&app().0, &tag, &mt("clx")).await.unwrap();
        assert_eq!(upstream.heads(), heads);
    }

    #[tokio::test]
    async fn refusals_name_no_upstream_and_no_other_machine_type() {
        let (service, _) = service(fixture_upstream()).await;
        let zen4 = resolved(&service, "zen4").await;
        let e = pin(&service, &zen4, "zen2").await.unwrap_err();
        let text = format!("{} {}", e.message, e.detail.unwrap());
        assert!(!text.contains("zen4") && !text.contains("fake") && !text.contains("http"), "{text}");
        // unknown and malformed digests answer as before
        let unknown = Digest::sha256_of(b"nothing");
        assert_eq!(pin(&service, &unknown, "zen2").await.unwrap_err().code, ErrorCode::ManifestUnknown);
    }
}

/// An index of CUDA builds whose configs carry NVIDIA's own `NVIDIA_REQUIRE_CUDA` strings, and a CPU build.
fn cuda_upstream() -> (Arc<FakeUpstream>, Vec<(String, Digest)>) {
    let strings: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/nvidia_require_cuda.json")).expect("fixture is JSON");
    let upstream = Arc::new(FakeUpstream::default());
    let mut entries = Vec::new();
    let mut children = Vec::new();
    for build in ["cpu", "11.8", "12.1", "12.4", "12.6"] {
        let env = match strings[build].as_str() {
            Some(require) => serde_json::json!(["PATH=/usr/bin", format!("NVIDIA_REQUIRE_CUDA={require}")]),
            None => serde_json::json!(["PATH=/usr/bin"]),
        };
        let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Env": env, "Labels": {"build": build}}});
        let config = upstream.config(serde_json::to_vec(&config).unwrap());
        let image = serde_json::json!({"schemaVersion": 2, "mediaType": filter::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
            "layers": []});
        let image = upstream.put(filter::OCI_MANIFEST, serde_json::to_vec(&image).unwrap());
        entries.push(serde_json::json!({"mediaType": filter::OCI_MANIFEST, "digest": image.digest.to_string(), "size": image.bytes.len(),
            "platform": {"os": "linux", "architecture": "amd64"}}));
        children.push((build.to_owned(), image.digest));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": filter::OCI_INDEX, "manifests": entries});
    upstream.tag("org/torch", "latest", filter::OCI_INDEX, serde_json::to_vec(&index).unwrap());
    (upstream, children)
}

#[tokio::test]
async fn cuda_builds_are_chosen_by_driver_and_configs_are_read_once() {
    let (upstream, children) = cuda_upstream();
    let store = machine_types().await;
    let types: &[(&str, &[&str], &str)] = &[
        ("cpu-only", &[], "cpu"),
        ("r470-tesla", &["cuda:11.4", "driver:470.239.06", "gpu-brand:tesla"], "12.6"),
        ("r525", &["cuda:12.0", "driver:525.147.05"], "11.8"),
        ("r535", &["cuda:12.2", "driver:535.183.01"], "12.1"),
        ("r535-tesla", &["cuda:12.2", "driver:535.183.01", "gpu-brand:tesla"], "12.6"),
        ("r550", &["cuda:12.4", "driver:550.127.05"], "12.4"),
        ("r560", &["cuda:12.6", "driver:560.35.03"], "12.6"),
    ];
    for (name, features, _) in types {
        let features = features.iter().map(|f| f.to_string()).collect();
        store.put_machine_type(&MachineType::new(name, features, MatchMode::Best).unwrap()).await.unwrap();
    }
    let service = RegistryService::new(store.clone(), upstream.clone(), window_off());
    let repo: RepositoryName = "org/torch".parse().unwrap();
    let tag: Reference = "latest".parse().unwrap();
    for (name, _, want) in types {
        let served = service.manifest(&repo, &tag, &mt(name)).await.unwrap();
        let index = filter::Index::parse(&served.bytes).unwrap();
        let got: Vec<&str> = index
            .entries
            .iter()
            .map(|e| children.iter().find(|(_, d)| d.as_str() == e.digest).map(|(b, _)| b.as_str()).unwrap())
            .collect();
        assert_eq!(got, [*want], "{name}");
    }
    // Each config read once, whatever the number of machine types; and a warm pull reads none.
    assert_eq!(upstream.config_calls(), children.len());
    assert_eq!(store.gpu_requirements_count(), children.len());
    let (gets, configs) = (upstream.gets(), upstream.config_calls());
    let (_, warm) = pull(&service, &repo, &tag, "r535").await;
    assert_eq!(warm.upstream_summary(), "head:ok");
    assert_eq!((upstream.gets(), upstream.config_calls()), (gets, configs));
    // Another instance (a new Lambda, a restart) finds the requirements in the store: no config read.
    let other = RegistryService::new(store.clone(), upstream.clone(), CacheOptions::default());
    other.manifest(&repo, &tag, &mt("r550")).await.unwrap();
    assert_eq!(upstream.config_calls(), configs);
    // explain's reasoning names the driver
    let index = service.upstream_manifest(&"org/torch:latest".parse().unwrap()).await.unwrap();
    let requirements = service.gpu_requirements(&repo, &index).await.unwrap();
    let machine = service.machine_type(&mt("r535")).await.unwrap();
    let verdicts = filter::explain_gpu(&filter::Index::parse(&index.bytes).unwrap(), &machine, &requirements);
    let cu124 = verdicts.iter().find(|v| v.entry.digest == children[3].1.as_str()).unwrap();
    assert!(!cu124.fits);
    assert!(
        cu124.reason.starts_with("needs cuda>=12.4 (or driver 470.x, 525.x, 535.x, with the compat libraries)"),
        "{}",
        cu124.reason
    );
    assert!(cu124.reason.ends_with("this node's driver supports cuda 12.2 (driver 535.183.01)"), "{}", cu124.reason);
}

#[tokio::test]
async fn oversized_or_non_json_configs_count_as_no_requirement() {
    let upstream = Arc::new(FakeUpstream::default());
    let mut entries = Vec::new();
    for config in [vec![b'x'; MAX_CONFIG_BYTES + 1], b"<html>not json".to_vec()] {
        let config = upstream.config(config);
        let image = serde_json::json!({"schemaVersion": 2, "mediaType": filter::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1}, "layers": []});
        let image = upstream.put(filter::OCI_MANIFEST, serde_json::to_vec(&image).unwrap());
        entries
            .push(serde_json::json!({"mediaType": filter::OCI_MANIFEST, "digest": image.digest.to_string(), "size": 1,
            "platform": {"os": "linux", "architecture": "amd64", "features": ["cpu:haswell"]}}));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": filter::OCI_INDEX, "manifests": entries});
    upstream.tag("org/odd", "latest", filter::OCI_INDEX, serde_json::to_vec(&index).unwrap());
    let (service, store) = new_service(upstream.clone(), CacheOptions::default()).await;
    let served = service.manifest(&"org/odd".parse().unwrap(), &"latest".parse().unwrap(), &mt("hsw")).await.unwrap();
    assert_eq!(filter::Index::parse(&served.bytes).unwrap().entries.len(), 1);
    assert_eq!(store.gpu_requirements_count(), 2, "kept, so never read (nor logged) again");
}

/// The driver dimension of "never a build the machine cannot run": pins are judged by the builds' NVIDIA
/// requirements too, read once per child as for tags.
#[tokio::test]
async fn pins_are_judged_by_the_driver_too() {
    let (upstream, children) = cuda_upstream();
    let store = machine_types().await;
    for (name, features) in
        [("r535", vec!["cuda:12.2", "driver:535.183.01"]), ("r560", vec!["cuda:12.6", "driver:560.35.03"])]
    {
        let features = features.into_iter().map(String::from).collect();
        store.put_machine_type(&MachineType::new(name, features, MatchMode::Best).unwrap()).await.unwrap();
    }
    let service = RegistryService::new(store, upstream, window_off());
    let repo: RepositoryName = "org/torch".parse().unwrap();
    let digest_of = |build: &str| children.iter().find(|(b, _)| b == build).map(|(_, d)| d.clone()).unwrap();
    let r560 = service.manifest(&repo, &"latest".parse().unwrap(), &mt("r560")).await.unwrap();
    let e = service.manifest(&repo, &by_digest(&r560.digest), &mt("r535")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Denied, "{e}");
    assert!(e.message.contains("cuda>=12.6"), "{e}");
    assert_eq!(e.detail.unwrap()["pullInstead"], serde_json::json!([format!("org/torch@{}", digest_of("12.1"))]));
    let cu124 = by_digest(&digest_of("12.4"));
    assert_eq!(service.manifest(&repo, &cu124, &mt("r535")).await.unwrap_err().code, ErrorCode::Denied);
    assert!(service.manifest(&repo, &cu124, &mt("r560")).await.is_ok());
    // the whole index: every client takes the CPU build, listed first
    let whole = Digest::sha256_of(&upstream_index_bytes(&service, &repo).await);
    assert!(service.manifest(&repo, &by_digest(&whole), &mt("r535")).await.is_ok());
}

async fn upstream_index_bytes(service: &RegistryService, repo: &RepositoryName) -> bytes::Bytes {
    let image = ImageRef { name: repo.clone(), reference: "latest".parse().unwrap() };
    service.upstream_manifest(&image).await.unwrap().bytes
}
