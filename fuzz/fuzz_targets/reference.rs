//! Repository names, references, digests and image references from any text: no panic, and what parses is what the
//! upstream URL builder may rely on (no `..`, no host, no percent-escapes) and prints back as it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metahub_core::reference::{Digest, ImageRef, Reference, RepositoryName};

fn check_name(s: &str, name: &RepositoryName) {
    assert_eq!(name.as_str(), s);
    assert_eq!(name.to_string(), s);
    assert!(!s.is_empty() && s.len() <= 255, "length {}", s.len());
    assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)), "{s:?}");
    assert!(!s.starts_with('/') && !s.ends_with('/') && !s.contains("//"), "{s:?}");
    for component in s.split('/') {
        assert!(component != "." && component != ".." && !component.contains(".."), "{s:?}");
        let first = component.as_bytes()[0];
        let last = component.as_bytes()[component.len() - 1];
        assert!(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(), "{s:?}");
        assert!(!component.contains("___"), "{s:?}");
    }
    assert_eq!(name.segments(), s.split('/').count());
}

fn check_digest(s: &str, digest: &Digest) {
    assert_eq!(digest.as_str(), s);
    let (algorithm, hex) = s.split_once(':').expect("a digest has an algorithm");
    assert_eq!(digest.hex(), hex);
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        other => panic!("unexpected algorithm {other:?} accepted in {s:?}"),
    };
    assert_eq!(hex.len(), len, "{s:?}");
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s:?}");
    // only an actual sha256 of the input may verify it
    if digest.verifies(s.as_bytes()) {
        assert_eq!(*digest, Digest::sha256_of(s.as_bytes()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(name) = s.parse::<RepositoryName>() {
        check_name(s, &name);
        // routing prefixes: stripping and adding a prefix keep the name valid
        if let Some((prefix, _)) = s.split_once('/') {
            let rest = name.strip_prefix(prefix).expect("a name strips its own first segment");
            assert!(rest.as_str().parse::<RepositoryName>().is_ok());
            assert_eq!(rest.with_prefix(prefix), name);
        }
    }
    if let Ok(digest) = s.parse::<Digest>() {
        check_digest(s, &digest);
    }
    if let Ok(reference) = s.parse::<Reference>() {
        assert_eq!(reference.as_str(), s);
        assert_eq!(reference.to_string().parse::<Reference>().ok(), Some(reference.clone()));
        match &reference {
            Reference::Tag(tag) => {
                let b = tag.as_str().as_bytes();
                assert!(!b.is_empty() && b.len() <= 128, "{s:?}");
                assert!(b[0] != b'.' && b[0] != b'-', "{s:?}");
                assert!(b.iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c)), "{s:?}");
            }
            Reference::Digest(d) => check_digest(s, d),
        }
    }
    if let Ok(image) = s.parse::<ImageRef>() {
        check_name(image.name.as_str(), &image.name);
        let printed = image.to_string();
        assert_eq!(printed.parse::<ImageRef>().ok(), Some(image.clone()), "{s:?} printed as {printed:?}");
    }
});
