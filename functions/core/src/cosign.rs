//! MetaHub's own cosign signature of a filtered index (the selection): the simple-signing payload cosign and
//! containers/image sign, signed with the operator's ECDSA P-256 key, in the form cosign looks for it — an OCI
//! manifest at the tag `sha256-<hex>.sig` of the filtered digest, whose layer is the payload with its base64 DER
//! signature in the `dev.cosignproject.cosign/signature` annotation — and, through its `subject`, in the referrers
//! of that digest.
//!
//! Signing is RFC 6979 (deterministic ECDSA, RustCrypto's `p256`, already in the tree through `jsonwebtoken`): one
//! key and one filtered index always give the same bytes, so instances that sign the same selection at the same
//! moment store the same records.

use crate::error::{Error, ErrorCode, Result};
use crate::filter::OCI_MANIFEST;
use crate::ports::Manifest;
use crate::reference::Digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// The media type of a simple-signing payload (cosign, containers/image).
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that carries the payload's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature among referrers (cosign's OCI 1.1 mode).
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The payload's `critical.type`.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The operator's selection signing key: ECDSA P-256, read from a PKCS#8 PEM. Its Debug never shows the key.
#[derive(Clone)]
pub struct SelectionSigner {
    key: SigningKey,
    /// sha256 of the public key's DER, hex: names the key in store records (a rotated key signs afresh).
    fingerprint: String,
}

impl fmt::Debug for SelectionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelectionSigner").field("public_key_sha256", &self.fingerprint).finish_non_exhaustive()
    }
}

impl PartialEq for SelectionSigner {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for SelectionSigner {}

impl SelectionSigner {
    /// The key of a PEM `PRIVATE KEY` (PKCS#8) document holding an ECDSA P-256 key (`openssl genpkey -algorithm EC
    /// -pkeyopt ec_paramgen_curve:P-256`). The error names what is wrong, never the document.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
            Error::new(
                ErrorCode::Unsupported,
                "the selection signing key is not a PEM PKCS#8 (\"BEGIN PRIVATE KEY\") ECDSA P-256 private key",
            )
        })?;
        let public = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|_| Error::internal("the selection signing key's public key does not encode"))?;
        Ok(SelectionSigner { fingerprint: hex::encode(Sha256::digest(public.as_bytes())), key })
    }

    /// The public key as a PEM `PUBLIC KEY` (what `cosign verify --key`, policy.json `keyPath` and Kyverno take).
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_else(|_| String::from("<the public key does not encode>"))
    }

    /// sha256 of the public key's DER, hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// ECDSA P-256 over SHA-256 of `payload`, ASN.1 DER, base64: the annotation's value.
    fn sign(&self, payload: &[u8]) -> String {
        let signature: DerSignature = self.key.sign(payload);
        BASE64.encode(signature.as_bytes())
    }
}

/// The simple-signing payload for `digest` as `docker_reference`, byte for byte as cosign writes it (Go's
/// json.Marshal of its struct: these keys in this order, compact, `"optional":null` when nothing optional).
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let critical = json!({
        "identity": {"docker-reference": docker_reference},
        "image": {"docker-manifest-digest": digest.as_str()},
        "type": SIGNATURE_TYPE,
    });
    format!("{{\"critical\":{critical},\"optional\":null}}").into_bytes()
}

/// A signature of one manifest: the `.sig` manifest and the blobs it names (payload, config), all MetaHub's own.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureArtifact {
    pub manifest: Manifest,
    /// (digest, media type, bytes) of the payload and the config.
    pub blobs: Vec<(Digest, &'static str, Bytes)>,
}

/// `subject` signed as `docker_reference` (`<registry host>/<repository>`, no tag: what cosign signs).
pub fn sign(signer: &SelectionSigner, docker_reference: &str, subject: &Manifest) -> SignatureArtifact {
    let payload = payload(docker_reference, &subject.digest);
    let payload_digest = Digest::sha256_of(&payload);
    // containers/image's config of a `.sig` attachment: an empty image whose layers are the payloads.
    let config = json!({"architecture": "", "os": "", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [payload_digest.as_str()]}})
    .to_string()
    .into_bytes();
    let config_digest = Digest::sha256_of(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_ARTIFACT_TYPE,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{
            "mediaType": SIMPLESIGNING,
            "digest": payload_digest.as_str(),
            "size": payload.len(),
            "annotations": {SIGNATURE_ANNOTATION: signer.sign(&payload)},
        }],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest.as_str(), "size": subject.bytes.len()},
    })
    .to_string()
    .into_bytes();
    SignatureArtifact {
        manifest: Manifest {
            digest: Digest::sha256_of(&manifest),
            media_type: OCI_MANIFEST.to_owned(),
            bytes: Bytes::from(manifest),
        },
        blobs: vec![
            (payload_digest, SIMPLESIGNING, Bytes::from(payload)),
            (config_digest, OCI_CONFIG, Bytes::from(config)),
        ],
    }
}

/// The digest whose signature tag `tag` is (`sha256-<hex>.sig`), if it is one.
pub fn signature_tag_subject(tag: &str) -> Option<Digest> {
    let (alg, hex) = tag.strip_suffix(".sig")?.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{Signature, VerifyingKey};
    use p256::pkcs8::DecodePublicKey;

    /// containers/image's signature/fixtures/cosign.pub and dir-img-cosign-valid/signature-1: a signature made by
    /// cosign itself, published with containers/image's tests.
    const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFNLqFhf4fiN6o/glAuYnq2jYUeL0
vRuLu/z39pmbVwS9ff5AYnlwaP9sxREajdLY9ynM6G1sy6AAmb7Z63TsLg==
-----END PUBLIC KEY-----";
    const COSIGN_PAYLOAD_B64: &str = "eyJjcml0aWNhbCI6eyJpZGVudGl0eSI6eyJkb2NrZXItcmVmZXJlbmNlIjoiMTkyLjE2OC42NC4yOjUwMDAvY29zaWduLXNpZ25lZC1zaW5nbGUtc2FtcGxlIn0sImltYWdlIjp7ImRvY2tlci1tYW5pZmVzdC1kaWdlc3QiOiJzaGEyNTY6NjM0YThmMzViNWYxNmRjZjRhYWEwODIyYWRjMGIxOTY0YmI3ODZmY2ExMmY2ODMxZGU4ZGRjNDVlNTk4NmEwMCJ9LCJ0eXBlIjoiY29zaWduIGNvbnRhaW5lciBpbWFnZSBzaWduYXR1cmUifSwib3B0aW9uYWwiOm51bGx9";
    const COSIGN_SIGNATURE: &str =
        "MEYCIQDmtamqYPjMg81nqeBhptrPls44aA/r7PwLmspINJY4MwIhANKRpqe2E9UCBtGFdPoz/8jAbaQm4uP4h+IpwKTE6ClR";

    /// A throwaway key for the tests (generated for them; it signs nothing else).
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxebCpRwuv92jtGjC
sB4YMIanlDhzGAtnW/zr2W4voh+hRANCAARM+Of2qILiEDXJQsde5/jKdnBx6X5I
h4Gh+LPKtA+nUceNdh9tHxvE9a5Zut+X3DtLiam/83RY6A+w36kwp7zD
-----END PRIVATE KEY-----";

    fn verify(public: &VerifyingKey, payload: &[u8], annotation: &str) -> bool {
        let der = BASE64.decode(annotation).unwrap();
        let signature = Signature::from_der(&der).unwrap();
        public.verify(payload, &signature).is_ok()
    }

    #[test]
    fn the_payload_is_byte_for_byte_cosigns() {
        let published = BASE64.decode(COSIGN_PAYLOAD_B64).unwrap();
        let digest: Digest = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00".parse().unwrap();
        assert_eq!(payload("192.168.64.2:5000/cosign-signed-single-sample", &digest), published);
        // and cosign's own signature of it checks out the way ours are made: ECDSA P-256, SHA-256, DER, base64
        let public = VerifyingKey::from_public_key_pem(COSIGN_PUB).unwrap();
        assert!(verify(&public, &published, COSIGN_SIGNATURE));
        assert!(!verify(&public, b"{}", COSIGN_SIGNATURE));
    }

    #[test]
    fn a_selection_signature_is_cosigns_form_and_verifies() {
        let signer = SelectionSigner::from_pkcs8_pem(TEST_KEY).unwrap();
        let index = Manifest {
            digest: Digest::sha256_of(b"{\"filtered\":1}"),
            media_type: crate::filter::OCI_INDEX.to_owned(),
            bytes: Bytes::from_static(b"{\"filtered\":1}"),
        };
        let art = sign(&signer, "metahub.example/org/app", &index);
        assert_eq!(art, sign(&signer, "metahub.example/org/app", &index), "RFC 6979: the same bytes every time");
        let m: serde_json::Value = serde_json::from_slice(&art.manifest.bytes).unwrap();
        assert_eq!(m["subject"]["digest"], index.digest.as_str());
        assert_eq!(m["artifactType"], SIGNATURE_ARTIFACT_TYPE);
        let layer = &m["layers"][0];
        assert_eq!(layer["mediaType"], SIMPLESIGNING);
        let (payload_digest, media_type, body) = &art.blobs[0];
        assert_eq!((layer["digest"].as_str().unwrap(), *media_type), (payload_digest.as_str(), SIMPLESIGNING));
        let p: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], index.digest.as_str());
        assert_eq!(p["critical"]["identity"]["docker-reference"], "metahub.example/org/app");
        assert_eq!(p["critical"]["type"], SIGNATURE_TYPE);
        let public = VerifyingKey::from_public_key_pem(&signer.public_key_pem()).unwrap();
        assert!(verify(&public, body, layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap()));
        let config: serde_json::Value = serde_json::from_slice(&art.blobs[1].2).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!([payload_digest.as_str()]));
        assert_eq!(m["config"]["digest"], art.blobs[1].0.as_str());
    }

    #[test]
    fn a_bad_key_is_refused_without_echoing_it() {
        for bad in ["", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", COSIGN_PUB] {
            let err = SelectionSigner::from_pkcs8_pem(bad).unwrap_err();
            assert!(err.message.contains("PKCS#8"), "{err:?}");
            assert!(!err.message.contains("AAAA") && !err.message.contains("MFkw"), "{err:?}");
        }
        let signer = SelectionSigner::from_pkcs8_pem(TEST_KEY).unwrap();
        let shown = format!("{signer:?}");
        assert!(shown.contains(signer.fingerprint()) && !shown.contains("MIGHAgEA"), "{shown}");
    }

    #[test]
    fn signature_tags() {
        let hex = "a".repeat(64);
        assert_eq!(signature_tag_subject(&format!("sha256-{hex}.sig")).unwrap().as_str(), format!("sha256:{hex}"));
        assert!(signature_tag_subject(&format!("sha256-{hex}")).is_none());
        assert!(signature_tag_subject(&format!("sha256-{hex}.att")).is_none());
        assert!(signature_tag_subject("latest.sig").is_none());
    }
}
