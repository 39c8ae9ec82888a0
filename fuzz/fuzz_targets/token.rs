//! Bearer token verification: no panic on any text, and nothing but a token MetaHub signed with its key, for its
//! audience, within its lifetime, ever verifies.
//!
//! The first byte picks a mode: any text as a token; a genuine token with some bytes changed; any payload signed
//! with the right key; any header over genuine claims signed with the right key.
#![no_main]

use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use metahub_core::token::{Access, Claims, ISSUER, TokenKeys, now_seconds};
use sha2::Sha256;
use std::sync::LazyLock;

const KEY: [u8; 32] = [0x5a; 32];
const AUDIENCE: &str = "metahub";
const LEEWAY: u64 = 5;

static KEYS: LazyLock<TokenKeys> = LazyLock::new(|| TokenKeys::new(&KEY, AUDIENCE, 300).expect("keys"));
static GENUINE: LazyLock<(String, Claims)> = LazyLock::new(|| {
    let access = Access::granted_for_scope("repository:org/app:pull").into_iter().collect();
    let machine_type = "skylake".parse().expect("a machine type name");
    let token = KEYS.issue("m-skylake", &machine_type, access).expect("issue").token;
    let claims = KEYS.verify(&token).expect("a fresh token verifies");
    (token, claims)
});

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// What every accepted token must satisfy, whatever its bytes.
fn check_accepted(claims: &Claims) {
    let now = now_seconds();
    assert_eq!(claims.aud, AUDIENCE, "{claims:?}");
    assert_eq!(claims.iss, ISSUER, "{claims:?}");
    assert!(claims.exp + LEEWAY >= now, "expired token accepted: {claims:?}");
    assert!(claims.nbf <= now + LEEWAY, "not-yet-valid token accepted: {claims:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            assert!(KEYS.verify(&text).is_err(), "a token nobody signed verified: {text:?}");
        }
        1 => {
            let (genuine, claims) = &*GENUINE;
            let mut bytes = genuine.clone().into_bytes();
            for pair in rest.chunks_exact(2) {
                let at = pair[0] as usize * 7 % bytes.len();
                bytes[at] = pair[1];
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(got) = KEYS.verify(&text) {
                // base64 padding bits may change without changing what they decode to; the claims may not
                assert_eq!(&got, claims, "a changed token verified with other claims: {text:?}");
            }
        }
        2 => {
            let token = sign(br#"{"alg":"HS256","typ":"JWT"}"#, rest);
            if let Ok(claims) = KEYS.verify(&token) {
                check_accepted(&claims);
            }
        }
        _ => {
            let (genuine, claims) = &*GENUINE;
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(genuine.split('.').nth(1).expect("three parts"))
                .expect("genuine payload");
            let token = sign(rest, &payload);
            if let Ok(got) = KEYS.verify(&token) {
                assert_eq!(&got, claims);
                let header: serde_json::Value = serde_json::from_slice(rest).expect("an accepted header is JSON");
                assert_eq!(header.get("alg").and_then(|a| a.as_str()), Some("HS256"), "header {header}");
            }
        }
    }
});
