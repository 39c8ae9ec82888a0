"""MetaHub's own signature of the selection (issue 29, `metahub serve --selection-signing-key`): each filtered index is
signed once with cosign's simple-signing payload and served where cosign looks for it (the tag `sha256-<hex>.sig` of
the filtered digest, and its referrers); the signature's payload and config come from MetaHub's store, every other
blob still redirects; a warm pull, a restart and a `.sig` lookup sign nothing new; the key never reaches a log, and
a key file others can read is refused."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.parse

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import registry_push
import sigstore_sign
from conftest import METAHUB_BIN, creds, free_port, start_configured_metahub
from signed_pull import Front, check_selection_signature, filtered_digest

SIGNED_LOG = "signed a selection"


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def key(workdir):
    k = ec.generate_private_key(ec.SECP256R1())
    path = workdir / "selection-key.pem"
    path.write_bytes(key_pem(k))
    path.chmod(0o600)
    return k, path


@pytest.fixture(scope="module")
def hub(workdir, upstream, images, key):
    h = start_configured_metahub(workdir, upstream, "metahub-selection-signing", ["--selection-signing-key", str(key[1])],
                                 env={"METAHUB_LOG_FORMAT": "json"})
    yield h
    h.stop()


@pytest.fixture(scope="module")
def front(hub) -> Front:
    return Front(url=hub.url, host=hub.host, verify=True, lookups=lambda: [], creds=creds)


def signed_count(hub) -> int:
    return sum(1 for line in hub.log().splitlines() if SIGNED_LOG in line)


def test_each_filtered_index_is_signed_once_and_served_as_cosign_looks_for_it(hub, front, key, images, workdir):
    """What `cosign verify --key` does with a tag pulled through MetaHub: resolve it (the filtered digest), read the
    `.sig` tag of that digest and its payload, check the payload names that digest and the signature checks out."""
    public = key[0].public_key()
    before = signed_count(hub)
    digests = {mt: filtered_digest(front, mt) for mt in ("skylake", "zen2")}
    assert len(set(digests.values())) == 2 and images.tags["org/app"][2] not in digests.values()
    assert signed_count(hub) == before + 2, "one signature per filtered index, made when it is generated"
    for mt, digest in digests.items():
        manifest = check_selection_signature(front, "org/app", digest, mt, public)
        # referrers of the filtered digest list it, with or without the artifactType filter
        token = front.token(mt, "org/app")
        r = front.get(f"org/app/referrers/{digest}", token, registry_push.OCI_INDEX)
        assert r.status_code == 200, r.text
        sigs = [m for m in r.json()["manifests"] if m.get("artifactType") == manifest["artifactType"]]
        assert len(sigs) == 1 and sigs[0]["mediaType"] == registry_push.OCI_MANIFEST, r.json()
        at = urllib.parse.quote(manifest["artifactType"], safe="")
        r = front.get(f"org/app/referrers/{digest}?artifactType={at}", token, registry_push.OCI_INDEX)
        assert r.headers["OCI-Filters-Applied"] == "artifactType" and r.json()["manifests"] == sigs
        r = front.get(f"org/app/referrers/{digest}?artifactType=application%2Fx-other", token, registry_push.OCI_INDEX)
        assert r.json()["manifests"] == []
    # warm pulls and lookups sign nothing
    for mt, digest in digests.items():
        assert filtered_digest(front, mt) == digest
        check_selection_signature(front, "org/app", digest, mt, public)
    assert signed_count(hub) == before + 2
    # every other blob still redirects to the upstream
    layer = images.images["cpu-skylake"].layer
    r = front.get(f"org/app/blobs/{registry_push.sha256(layer)}", front.token("skylake", "org/app"))
    assert r.status_code == 307 and r.headers["Location"].startswith(hub.upstream.url)
    # a signature of another key does not verify
    with pytest.raises(InvalidSignature):
        check_selection_signature(front, "org/app", digests["skylake"], "skylake", ec.generate_private_key(ec.SECP256R1()).public_key())
    # after a restart (a cold instance on the same store): served from the store, not signed again
    hub.restart(workdir)
    for mt, digest in digests.items():
        assert filtered_digest(front, mt) == digest
        check_selection_signature(front, "org/app", digest, mt, public)
    assert signed_count(hub) == before + 2, "the restarted process signed nothing"


def test_a_digest_metahub_did_not_make_keeps_the_upstreams_tags(hub, front, images):
    """The `.sig` tag of an upstream digest is the upstream's (404 here: nobody signed org/app upstream)."""
    token = front.token("skylake", "org/app")
    for digest in (images.tags["org/app"][2], images.images["cpu-skylake"].digest):
        r = front.get(f"org/app/manifests/{sigstore_sign.attachment_tag(digest)}", token, registry_push.OCI_MANIFEST)
        assert r.status_code == 404, r.text


def test_the_key_is_never_logged(hub, key):
    pem = key[1].read_text()
    body = "".join(pem.strip().splitlines()[1:-1])
    log = hub.log()
    assert SIGNED_LOG in log
    for chunk in [body[i : i + 24] for i in range(0, len(body), 24)]:
        assert chunk not in log


@pytest.mark.parametrize("problem", ["group-readable", "not-a-key", "public-key"])
def test_a_bad_key_file_stops_serve_with_one_line(workdir, upstream, problem, tmp_path):
    k = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.pem"
    if problem == "group-readable":
        path.write_bytes(key_pem(k))
        path.chmod(0o640)
    elif problem == "not-a-key":
        path.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n-----END PRIVATE KEY-----\n")
        path.chmod(0o600)
    else:
        path.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        path.chmod(0o600)
    port = free_port()
    p = subprocess.run([METAHUB_BIN, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", upstream.url,
                        "--store", f"file:{tmp_path / 'store.redb'}", "--selection-signing-key", str(path)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "RUST_LOG": "info"})
    assert p.returncode != 0
    assert str(path) in p.stderr
    assert ("chmod 600" in p.stderr) == (problem == "group-readable"), p.stderr
    assert "c2VjcmV0" not in p.stderr and "MIG" not in p.stderr, p.stderr


def test_base64_signature_is_der(hub, front, key):
    """The annotation is base64 of an ASN.1 DER ECDSA signature (what cosign and containers/image decode)."""
    digest = filtered_digest(front, "skylake")
    token = front.token("skylake", "org/app")
    manifest = front.get(f"org/app/manifests/{sigstore_sign.attachment_tag(digest)}", token, registry_push.OCI_MANIFEST).json()
    layer = manifest["layers"][0]
    der = base64.b64decode(layer["annotations"][sigstore_sign.SIGNATURE_ANNOTATION])
    assert der[0] == 0x30 and der[1] == len(der) - 2
    payload = front.get(f"org/app/blobs/{layer['digest']}", token).content
    key[0].public_key().verify(der, payload, ec.ECDSA(hashes.SHA256()))
