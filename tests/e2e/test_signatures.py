"""A publisher's sigstore signatures through `metahub serve` (issue 29): a node that verifies what it pulls
(skopeo/podman/CRI-O with a `sigstoreSigned` policy) finds the signature of the very build MetaHub chose for its
machine type, by tag and by child digest, and that signature verifies; an unsigned image and another key are
refused. Also cosign's `.att` attestations and the referrers of child digests. The same checks run through the
serverless edge in tests/serverless/test_edge_signatures.py; the scenario is in signed_pull.py."""

from __future__ import annotations

import json

import pytest

import sigstore_sign
from conftest import creds, start_configured_metahub
from signed_pull import Front, node_config, publish
# the shared scenario: pytest collects these here, with this module's fixtures
from signed_pull import (  # noqa: F401
    test_an_unsigned_image_and_another_key_are_refused, test_attestations_and_referrers_of_child_digests,
    test_the_filtered_index_carries_no_publisher_signature, test_the_signature_of_the_build_served_is_found_and_verifies,
)


def access_lookups(hub) -> list[tuple[str, int]]:
    """(reference, status) of every manifest request in metahub's JSON access log."""
    return [(doc.get("reference"), doc.get("status")) for doc in hub.access_lines() if doc.get("route") == "manifest"]


@pytest.fixture(scope="module")
def hub(workdir, upstream, images):
    h = start_configured_metahub(workdir, upstream, "metahub-signatures", env={"METAHUB_LOG_FORMAT": "json"})
    yield h
    h.stop()


@pytest.fixture(scope="module")
def published(workdir, upstream, images):
    return publish(workdir, upstream.url, images)


@pytest.fixture(scope="module")
def front(hub) -> Front:
    return Front(url=hub.url, host=hub.host, verify=True, lookups=lambda: access_lookups(hub), creds=creds)


@pytest.fixture(scope="module")
def node(workdir, front, published):
    """A node's configuration for the front (signed_pull.node_config)."""
    return node_config(workdir / "signatures-node", front.host, published)


def test_the_publisher_key_is_in_cosigns_encrypted_format(published):
    """The key skopeo reads (`--sign-by-sigstore-private-key`): PEM "ENCRYPTED COSIGN PRIVATE KEY" around go-tuf's
    scrypt + nacl/secretbox envelope of a PKCS#8 P-256 key; a wrong passphrase opens nothing."""
    pem = published.key.private_pem.decode()
    assert pem.startswith("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n")
    envelope = json.loads(sigstore_sign._unpem(sigstore_sign.PRIVATE_PEM_LABEL, published.key.private_pem))
    assert envelope["kdf"]["name"] == "scrypt" and envelope["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert envelope["cipher"]["name"] == "nacl/secretbox"
    assert published.key.private_key().curve.name == "secp256r1"
    with pytest.raises(ValueError):
        sigstore_sign.unseal(json.dumps(envelope).encode(), b"not the passphrase")
    # go-tuf's published vector (encrypted/encrypted_test.go TestDecrypt)
    vector = (b'{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},'
              b'"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},'
              b'"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}')
    assert sigstore_sign.unseal(vector, b"supersecret") == b"reallyimportant"
    # who signed: real skopeo, or (Debian) the test in containers/image's format after skopeo refused
    if published.signed_by != "skopeo":
        assert "sigstore disabled" in published.skopeo_refusal
