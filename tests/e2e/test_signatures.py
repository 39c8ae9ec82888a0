"""A publisher's sigstore signatures through `metahub serve` (issue 29): a node that verifies what it pulls
(skopeo/podman/CRI-O with a `sigstoreSigned` policy) finds the signature of the very build MetaHub chose for its
machine type, by tag and by child digest, and that signature verifies; an unsigned image and another key are
refused. Also cosign's `.att` attestations and the referrers of child digests. The same checks run through the
serverless edge in tests/serverless/test_edge_signatures.py; the scenario is in signed_pull.py."""

from __future__ import annotations

import json
import urllib.parse

import pytest

import registry_push
import sigstore_sign
from conftest import creds, start_configured_metahub
from signed_pull import REPO, UNSIGNED_REPO, Front, publish, registries_d, sigstore_policy, skopeo_pull, verify_served_signatures

# machine type -> the build it is served of org/app (tests/e2e/test_pull.py's EXPECTED_AMD64)
EXPECTED = {"skylake": "cpu-skylake", "zen2": "cpu-x86_64_v3"}
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def access_lookups(hub) -> list[tuple[str, int]]:
    """(reference, status) of every manifest request in metahub's JSON access log."""
    out = []
    for text in hub.log().splitlines():
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if doc.get("target") == "metahub::access" and doc.get("route") == "manifest":
            out.append((doc.get("reference"), doc.get("status")))
    return out


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
    """A node's configuration: registries.d with sigstore attachments for the front, a policy for the publisher's
    key and one for another key."""
    d = workdir / "signatures-node"
    d.mkdir(exist_ok=True)
    regd = registries_d(d / "registries.d", front.host)
    good = sigstore_policy(d / "policy.json", front.host, published.upstream_host, published.public_key_file)
    wrong = sigstore_policy(d / "policy-other-key.json", front.host, published.upstream_host, published.other_public_key_file)
    return {"registries.d": regd, "policy": good, "policy-other-key": wrong}


def check_signed_pull(front, published, node, images, machine_type, how, tmp_path):
    """The scenario of one pull, shared with the edge: skopeo asks for the signature of exactly the build the front
    serves the machine type, the front answers it, and it verifies (publisher's key) or not (another key)."""
    child = images.images[EXPECTED[machine_type]].digest
    assert front.served_child(machine_type) == child
    ref = f"{front.host}/{REPO}:latest" if how == "tag" else f"{front.host}/{REPO}@{child}"
    seen = len(front.lookups())
    pull = skopeo_pull(front, ref, machine_type, node["policy"], node["registries.d"], tmp_path / "pulled")
    # Real skopeo accepts it; Debian's stops at the crypto step, after the lookup, which is checked below instead.
    assert pull.outcome in {"accepted", "sigstore-disabled"}, pull.stderr[-2000:]
    assert pull.looked_up == [child], f"skopeo looked up {pull.looked_up}, not the build it copies ({child})"
    answered = [(r, s) for r, s in front.lookups()[seen:] if r.endswith(".sig")]
    assert answered == [(sigstore_sign.attachment_tag(child), 200)], answered
    payloads = verify_served_signatures(front, published, child, machine_type, ref)
    assert [p["critical"]["identity"]["docker-reference"] for p in payloads] == [published.reference()]
    with pytest.raises(sigstore_sign.InvalidSignature):
        verify_served_signatures(front, published, child, machine_type, ref, key=published.other_key)


@pytest.mark.parametrize("how", ["tag", "child-digest"])
@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
def test_the_signature_of_the_build_served_is_found_and_verifies(front, published, node, images, machine_type, how, tmp_path):
    check_signed_pull(front, published, node, images, machine_type, how, tmp_path)


def check_unsigned_and_other_key_refused(front, published, node, images, tmp_path):
    # org/app holds the same builds, never signed: refused, after a lookup the front answered 404
    child = images.images[EXPECTED["skylake"]].digest
    seen = len(front.lookups())
    pull = skopeo_pull(front, f"{front.host}/{UNSIGNED_REPO}:latest", "skylake", node["policy"], node["registries.d"],
                       tmp_path / "unsigned")
    assert pull.outcome == "unsigned", pull.stderr[-2000:]
    assert pull.looked_up == [child]
    assert [(r, s) for r, s in front.lookups()[seen:] if r.endswith(".sig")] == [(sigstore_sign.attachment_tag(child), 404)]
    # a policy for another key: never accepted (real skopeo: the signature fails; Debian's: sigstore disabled), and
    # the signature skopeo found does not verify against that key
    pull = skopeo_pull(front, f"{front.host}/{REPO}:latest", "skylake", node["policy-other-key"], node["registries.d"],
                       tmp_path / "other-key")
    assert pull.outcome in {"bad-signature", "sigstore-disabled"}, pull.stderr[-2000:]
    assert pull.looked_up == [child]
    with pytest.raises(sigstore_sign.InvalidSignature):
        verify_served_signatures(front, published, child, "skylake", f"{front.host}/{REPO}:latest", key=published.other_key)


def test_an_unsigned_image_and_another_key_are_refused(front, published, node, images, tmp_path):
    check_unsigned_and_other_key_refused(front, published, node, images, tmp_path)


def check_filtered_index_has_no_publisher_signature(front, published):
    """What does not verify through a filtering front: the publisher signed the upstream index, the node's tag
    resolves to the filtered index, which nobody signed (docs/signatures.md)."""
    token = front.token("skylake")
    filtered = front.get(f"{REPO}/manifests/latest", token, method="HEAD").headers["Docker-Content-Digest"]
    assert filtered != published.index_digest
    r = front.get(f"{REPO}/manifests/{sigstore_sign.attachment_tag(filtered)}", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 404, r.text
    # the upstream index's own signature is still there, under the upstream digest, and verifies
    verify_served_signatures(front, published, published.index_digest, "skylake", f"{front.host}/{REPO}@{published.index_digest}")


def test_the_filtered_index_carries_no_publisher_signature(front, published):
    check_filtered_index_has_no_publisher_signature(front, published)


def check_attestations_and_child_referrers(front, published, images):
    """cosign's `.att` attachment of a child, and the child's referrers (the OCI 1.1 way to attach), through the
    front; a child nothing refers to has an empty referrers index."""
    child = images.images[EXPECTED["zen2"]].digest
    sigstore_sign.push_attestation(published.upstream_url, REPO, child, published.key, {"builder": "e2e"})
    token = front.token("zen2")
    r = front.get(f"{REPO}/manifests/{child.replace(':', '-', 1)}.att", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 200, r.text
    layer = r.json()["layers"][0]
    assert layer["mediaType"] == sigstore_sign.IN_TOTO
    statement = sigstore_sign.verify_dsse(front.blob(REPO, layer["digest"], token), published.key.public_key())
    assert statement["subject"][0]["digest"] == {"sha256": child.split(":", 1)[1]}
    with pytest.raises(sigstore_sign.InvalidSignature):
        sigstore_sign.verify_dsse(front.blob(REPO, layer["digest"], token), published.other_key.public_key())

    size = len(images.images[EXPECTED["zen2"]].manifest)
    entry = registry_push.push_referrer(published.upstream_url, REPO, child, size, COSIGN_SIGNATURE,
                                        b'{"signed":"' + child.encode() + b'"}', subject_media_type=registry_push.OCI_MANIFEST)
    r = front.get(f"{REPO}/referrers/{child}", token, registry_push.OCI_INDEX)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == registry_push.OCI_INDEX
    assert r.json()["manifests"] == [entry]
    r = front.get(f"{REPO}/referrers/{child}?artifactType={urllib.parse.quote(COSIGN_SIGNATURE, safe='')}", token, registry_push.OCI_INDEX)
    assert r.status_code == 200 and r.headers["OCI-Filters-Applied"] == "artifactType"
    assert r.json()["manifests"] == [entry]
    other = images.images[EXPECTED["skylake"]].digest
    r = front.get(f"{REPO}/referrers/{other}", front.token("skylake"), registry_push.OCI_INDEX)
    assert r.status_code == 200, r.text
    assert r.json() == {"schemaVersion": 2, "mediaType": registry_push.OCI_INDEX, "manifests": []}


def test_attestations_and_referrers_of_child_digests(front, published, images):
    check_attestations_and_child_referrers(front, published, images)


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
