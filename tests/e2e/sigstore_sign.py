"""Sigstore (cosign) signatures as a publisher writes them, and their verification, for tests/e2e/test_signatures.py.

- Keys: ECDSA P-256 in cosign's encrypted format, the one containers/image reads (`--sign-by-sigstore-private-key`):
  PEM "ENCRYPTED COSIGN PRIVATE KEY" around go-tuf's `encrypted` JSON envelope: scrypt (N=32768, r=8, p=1, 32-byte
  salt) derives a nacl secretbox key (24-byte nonce) that seals the PKCS#8 DER of the private key. The public key is
  a PKIX "PUBLIC KEY" PEM.
- Attachments: what containers/image's `putSignaturesToSigstoreAttachments` pushes for manifest digest D: the tag
  `sha256-<hex of D>.sig` holding an OCI manifest whose layers are the simple-signing payloads
  (`application/vnd.dev.cosign.simplesigning.v1+json`), each with its base64 ECDSA-SHA256 signature in the
  `dev.cosignproject.cosign/signature` annotation, and an OCI config `{"architecture":"","os":"","config":{},
  "rootfs":{"type":"layers","diff_ids":[<payload digests>]}}` (Go's json.Marshal of an empty image-spec Image).
- The payload (containers/image `NewUntrustedSigstorePayload`, Go map keys sorted, compact):
  `{"critical":{"identity":{"docker-reference":REF},"image":{"docker-manifest-digest":D},"type":"cosign container
  image signature"},"optional":{"creator":…,"timestamp":…}}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

import nacl.secret
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import registry_push

PRIVATE_PEM_LABEL = "ENCRYPTED COSIGN PRIVATE KEY"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
IN_TOTO = "application/vnd.dsse.envelope.v1+json"
SCRYPT = {"N": 32768, "r": 8, "p": 1}


def _compact(obj) -> bytes:
    """Go's json.Marshal: no spaces; the caller orders map keys as Go does (sorted)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def _unpem(label: str, pem: bytes) -> bytes:
    text = pem.decode()
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if begin not in text or end not in text:
        raise ValueError(f"not a {label} PEM")
    return base64.b64decode("".join(text.split(begin, 1)[1].split(end, 1)[0].split()))


def _scrypt_key(passphrase: bytes, salt: bytes, params: dict) -> bytes:
    n, r, p = params["N"], params["r"], params["p"]
    # OpenSSL's scrypt wants room for 128*N*r bytes (32 MiB here), above its 32 MiB default cap
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)


def seal(plaintext: bytes, passphrase: bytes) -> bytes:
    """go-tuf `encrypted.Encrypt` with its legacy (cosign) parameters: the JSON envelope."""
    salt, nonce = os.urandom(32), os.urandom(24)
    box = nacl.secret.SecretBox(_scrypt_key(passphrase, salt, SCRYPT))
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    return _compact({
        "kdf": {"name": "scrypt", "params": SCRYPT, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    })


def unseal(envelope: bytes, passphrase: bytes) -> bytes:
    """go-tuf `encrypted.Decrypt`: the plaintext, or ValueError (wrong passphrase, tampering, unknown algorithm)."""
    doc = json.loads(envelope)
    if doc["kdf"]["name"] != "scrypt" or doc["cipher"]["name"] != "nacl/secretbox":
        raise ValueError(f"unsupported key encryption {doc['kdf']['name']}/{doc['cipher']['name']}")
    salt, nonce = base64.b64decode(doc["kdf"]["salt"]), base64.b64decode(doc["cipher"]["nonce"])
    box = nacl.secret.SecretBox(_scrypt_key(passphrase, salt, doc["kdf"]["params"]))
    try:
        return box.decrypt(base64.b64decode(doc["ciphertext"]), nonce)
    except Exception as e:  # nacl.exceptions.CryptoError
        raise ValueError(f"decrypt: {e}") from None


@dataclass
class KeyPair:
    """A cosign key pair: `private_pem` (encrypted under `passphrase`) and `public_pem`, as files skopeo reads."""

    private_pem: bytes
    public_pem: bytes
    passphrase: bytes

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        der = unseal(_unpem(PRIVATE_PEM_LABEL, self.private_pem), self.passphrase)
        key = serialization.load_der_private_key(der, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        return key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_public_key(self.public_pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key


def generate_key_pair(passphrase: bytes) -> KeyPair:
    """`cosign generate-key-pair` / `skopeo generate-sigstore-key`: ECDSA P-256, PKCS#8 sealed, PKIX public."""
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(_pem(PRIVATE_PEM_LABEL, seal(pkcs8, passphrase)), public, passphrase)


def payload(manifest_digest: str, docker_reference: str, timestamp: int = 1_700_000_000) -> bytes:
    """The simple-signing payload containers/image signs (keys in Go's sorted-map order)."""
    return _compact({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": {"creator": "containers/image 5.23.1", "timestamp": timestamp},
    })


def sign(key: KeyPair, data: bytes) -> str:
    """ECDSA P-256 over SHA-256, ASN.1 DER, base64: the annotation value."""
    return base64.b64encode(key.private_key().sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def attachment_tag(digest: str) -> str:
    return digest.replace(":", "-", 1) + ".sig"


def push_signature(base: str, repo: str, manifest_digest: str, docker_reference: str, key: KeyPair) -> dict:
    """Sign `manifest_digest` as `docker_reference` and push the `.sig` attachment as containers/image does
    (appending to an existing attachment). Returns {"manifest": bytes, "digest": str, "payload": bytes}."""
    reg = registry_push.Registry(base)
    tag = attachment_tag(manifest_digest)
    existing = reg.get_manifest(repo, tag, registry_push.OCI_MANIFEST)
    layers = existing.json()["layers"] if existing.status_code == 200 else []
    body = payload(manifest_digest, docker_reference)
    reg.push_blob(repo, body)
    layers.append({"mediaType": SIMPLESIGNING, "digest": registry_push.sha256(body), "size": len(body),
                   "annotations": {SIGNATURE_ANNOTATION: sign(key, body)}})
    config = _compact({"architecture": "", "os": "", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}})
    reg.push_blob(repo, config)
    manifest = _compact({
        "schemaVersion": 2,
        "mediaType": registry_push.OCI_MANIFEST,
        "config": {"mediaType": registry_push.OCI_CONFIG, "digest": registry_push.sha256(config), "size": len(config)},
        "layers": layers,
    })
    digest = reg.push_manifest(repo, tag, manifest, registry_push.OCI_MANIFEST)
    return {"manifest": manifest, "digest": digest, "payload": body}


def push_attestation(base: str, repo: str, manifest_digest: str, key: KeyPair, predicate: dict) -> bytes:
    """cosign's `.att` attachment: a DSSE envelope of an in-toto statement about `manifest_digest`, signed with
    `key` (PAE, as cosign attest writes it), in the tag `sha256-<hex>.att`. Returns the manifest bytes."""
    reg = registry_push.Registry(base)
    statement = _compact({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": "https://example.com/e2e",
                          "subject": [{"name": repo, "digest": {"sha256": manifest_digest.split(":", 1)[1]}}],
                          "predicate": predicate})
    payload_type = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(statement), statement)
    envelope = _compact({"payloadType": payload_type, "payload": base64.b64encode(statement).decode(),
                         "signatures": [{"keyid": "", "sig": sign(key, pae)}]})
    reg.push_blob(repo, envelope)
    config = _compact({"architecture": "", "os": "", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": [registry_push.sha256(envelope)]}})
    reg.push_blob(repo, config)
    manifest = _compact({
        "schemaVersion": 2,
        "mediaType": registry_push.OCI_MANIFEST,
        "config": {"mediaType": registry_push.OCI_CONFIG, "digest": registry_push.sha256(config), "size": len(config)},
        "layers": [{"mediaType": IN_TOTO, "digest": registry_push.sha256(envelope), "size": len(envelope),
                    "annotations": {"predicateType": "https://example.com/e2e"}}],
    })
    reg.push_manifest(repo, manifest_digest.replace(":", "-", 1) + ".att", manifest, registry_push.OCI_MANIFEST)
    return manifest


def verify_dsse(envelope: bytes, public: ec.EllipticCurvePublicKey) -> dict:
    """The in-toto statement of a DSSE envelope whose signature `public` made; raises InvalidSignature otherwise."""
    doc = json.loads(envelope)
    statement = base64.b64decode(doc["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(doc["payloadType"]), doc["payloadType"].encode(), len(statement), statement)
    public.verify(base64.b64decode(doc["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    return json.loads(statement)


def remap_identity(reference: str, prefix: str, signed_prefix: str) -> str:
    """containers-policy.json `remapIdentity`: a reference under `prefix` is matched as the same one under
    `signed_prefix` (prefix matching on whole path components)."""
    if reference == prefix or reference.startswith(prefix + "/") or reference.startswith(prefix + ":") \
            or reference.startswith(prefix + "@"):
        return signed_prefix + reference[len(prefix):]
    return reference


def _repository(reference: str) -> str:
    name = reference.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def verify(layer_payload: bytes, annotation: str, public: ec.EllipticCurvePublicKey, expected_digest: str,
           pulled_reference: str) -> dict:
    """containers/image `VerifySigstorePayload` with the `matchRepoDigestOrExact` identity rule (what `remapIdentity`
    applies after remapping; pass the remapped reference): the P-256 signature over the exact payload bytes, then
    the payload's type and digest, then its identity: equal to a pulled `repo:tag`, or the same repository for a
    pull by digest. Raises InvalidSignature or AssertionError naming what failed; returns the parsed payload."""
    public.verify(base64.b64decode(annotation), layer_payload, ec.ECDSA(hashes.SHA256()))
    doc = json.loads(layer_payload)
    assert set(doc) == {"critical", "optional"}, doc
    critical = doc["critical"]
    assert set(critical) == {"identity", "image", "type"}, critical
    assert critical["type"] == SIGNATURE_TYPE, critical
    assert critical["image"] == {"docker-manifest-digest": expected_digest}, (critical, expected_digest)
    signed = critical["identity"]["docker-reference"]
    if "@" in pulled_reference:
        assert _repository(signed) == _repository(pulled_reference), (signed, pulled_reference)
    else:
        assert signed == pulled_reference, (signed, pulled_reference)
    return doc


__all__ = ["InvalidSignature", "KeyPair", "generate_key_pair", "payload", "push_signature", "verify", "remap_identity",
           "seal", "unseal", "attachment_tag", "push_attestation", "verify_dsse"]
