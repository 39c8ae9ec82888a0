"""Pulls through metahub with real clients (skopeo, podman, containerd) and raw HTTP: each machine type gets
the entry made for it. Parametrized over the store kinds (embedded file store, DynamoDB on moto)."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from conftest import MACHINE_TYPES, assert_registry_error, creds, get_token, skopeo_copy_variant, skopeo_raw, v2
from registry_push import ALL_MANIFEST_TYPES, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256

# What each machine type gets for org/app (and org/applist) on linux/amd64. Per the archspec DAG
# zen2 descends from x86_64_v3 (zen -> x86_64_v3), so it gets the x86_64_v3 build, not broadwell/skylake.
EXPECTED_AMD64 = {
    "skylake": "cpu-skylake",  # deepest fitting cpu; the [skylake, nvcap:7.0] entry needs a GPU
    "cascadelake-a100": "nvcap-8.0",  # nvcap 8.6 runs 8.0 builds, not 7.0 ones
    "zen2": "cpu-x86_64_v3",
    "broadwell-m60": "cpu-broadwell",  # nvcap 5.2 runs neither 7.0 nor 8.0
    "exact-skylake": "cpu-skylake",
    "graviton": "generic-amd64",  # an arm64 machine type leaves the amd64 group to its generic entry
}
ALL_TYPES = sorted(MACHINE_TYPES)
assert set(EXPECTED_AMD64) == set(MACHINE_TYPES)


def entries_of(index: dict, arch: str) -> list[dict]:
    return [m for m in index["manifests"] if m.get("platform", {}).get("architecture") == arch]


# ---------------------------------------------------------------------------------------------
# real clients


@pytest.mark.parametrize("repo", ["org/app", "org/applist"])
@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_skopeo_pull_by_tag(metahub, machine_type, repo, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{metahub.host}/{repo}:latest", tmp_path / "img", creds(machine_type))
    assert label == text == EXPECTED_AMD64[machine_type]


@pytest.mark.parametrize("machine_type", ["graviton", "skylake"])
def test_skopeo_pull_arm64(metahub, machine_type, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{metahub.host}/org/app:latest", tmp_path / "img", creds(machine_type), arch="arm64")
    assert label == text == "arm64"


def test_graviton_arm64_with_podman_and_containerd(metahub, containerd, podman):
    c = creds("graviton")
    ref = f"{metahub.host}/org/app:latest"
    assert podman.pull_variant(ref, c, arch="arm64") == "arm64"
    ns = containerd.namespace()
    containerd.pull(ref, ns, user=":".join(c), platform="linux/arm64")
    assert containerd.pulled_variant(ref, ns, arch="arm64")[:2] == ("arm64", "arm64")


@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_podman_pull_by_tag(metahub, machine_type, podman):
    assert podman.pull_variant(f"{metahub.host}/org/app:latest", creds(machine_type)) == EXPECTED_AMD64[machine_type]


@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_containerd_pull_by_tag(metahub, containerd, machine_type):
    ns = containerd.namespace()
    ref = f"{metahub.host}/org/app:latest"
    login, pw = creds(machine_type)
    containerd.pull(ref, ns, user=f"{login}:{pw}")
    label, text, index = containerd.pulled_variant(ref, ns)
    assert label == text == EXPECTED_AMD64[machine_type]
    assert len(entries_of(index, "amd64")) == 1, index


def test_containerd_pull_docker_list(metahub, containerd):
    ns = containerd.namespace()
    ref = f"{metahub.host}/org/applist:latest"
    containerd.pull(ref, ns, user=":".join(creds("cascadelake-a100")))
    label, text, index = containerd.pulled_variant(ref, ns)
    assert label == text == "nvcap-8.0"
    assert index["mediaType"] == DOCKER_LIST


def test_pull_by_filtered_digest(metahub, containerd, podman, tmp_path):
    """The digest of a filtered index (what a tag resolves to) is pullable later by every client."""
    c = creds("broadwell-m60")
    raw = skopeo_raw(f"{metahub.host}/org/app:latest", c)
    digest = sha256(raw)
    ref = f"{metahub.host}/org/app@{digest}"
    label, text, _ = skopeo_copy_variant(ref, tmp_path / "img", c)
    assert label == text == "cpu-broadwell"
    assert podman.pull_variant(ref, c) == "cpu-broadwell"
    ns = containerd.namespace()
    containerd.pull(ref, ns, user=":".join(c))
    assert containerd.pulled_variant(ref, ns)[:2] == ("cpu-broadwell", "cpu-broadwell")


def test_pull_by_upstream_child_digest(metahub, images, podman, tmp_path):
    """A child digest is the upstream's manifest, served verbatim to a machine that runs it, and refused to one
    that does not (the index lists it under requirements the machine lacks): test_pins.py has every client."""
    skopeo_raw(f"{metahub.host}/org/app:latest", creds("zen2"))  # MetaHub has read the index
    runs = f"{metahub.host}/org/app@{images.images['cpu-skylake'].digest}"
    label, text, _ = skopeo_copy_variant(runs, tmp_path / "img", creds("cascadelake-a100"))
    assert label == text == "cpu-skylake"
    assert podman.pull_variant(runs, creds("cascadelake-a100")) == "cpu-skylake"
    cannot = f"{metahub.host}/org/app@{images.images['nvcap-7.0'].digest}"
    with pytest.raises(AssertionError, match="(?i)denied"):
        podman.pull_variant(cannot, creds("zen2"))


def test_single_manifest_passes_through(metahub, images, tmp_path):
    label, text, manifest = skopeo_copy_variant(f"{metahub.host}/org/single:latest", tmp_path / "img", creds("skylake"))
    assert label == text == "single"
    token = get_token(metahub, "skylake", repo="org/single")
    r = v2(metahub, "org/single/manifests/latest", token)
    assert r.status_code == 200
    assert r.content == images.tags["org/single"][0]
    assert r.headers["Docker-Content-Digest"] == images.tags["org/single"][2]


# ---------------------------------------------------------------------------------------------
# the filtered index over raw HTTP


@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_filtered_index_by_tag(metahub, images, machine_type):
    token = get_token(metahub, machine_type)
    r = v2(metahub, "org/app/manifests/latest", token)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == OCI_INDEX
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    index = json.loads(r.content)
    amd64 = entries_of(index, "amd64")
    assert [images.variant_of_digest(m["digest"]) for m in amd64] == [EXPECTED_AMD64[machine_type]]
    assert [images.variant_of_digest(m["digest"]) for m in entries_of(index, "arm64")] == ["arm64"]
    # the index's own annotations survive filtering
    assert index["annotations"] == json.loads(images.tags["org/app"][0])["annotations"]
    # attestations stay exactly when the entry they describe stays
    attest = [m for m in index["manifests"] if m.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"]
    if EXPECTED_AMD64[machine_type] == "cpu-skylake":
        assert [m["digest"] for m in attest] == [images.attestation.digest]
    else:
        assert attest == []
    # a pure function of (index, machine type): same bytes every time
    again = v2(metahub, "org/app/manifests/latest", token)
    assert again.content == r.content


def test_same_filtered_digest_on_every_store(metahub, metahub_file):
    """Filtering does not depend on the store: the same machine type gets the same bytes from both."""
    a = v2(metahub, "org/app/manifests/latest", get_token(metahub, "skylake"))
    b = v2(metahub_file, "org/app/manifests/latest", get_token(metahub_file, "skylake"))
    assert a.status_code == b.status_code == 200
    assert a.headers["Docker-Content-Digest"] == b.headers["Docker-Content-Digest"]


def test_machine_types_get_different_digests(metahub):
    digests = {mt: v2(metahub, "org/app/manifests/latest", get_token(metahub, mt)).headers["Docker-Content-Digest"] for mt in ("skylake", "zen2", "cascadelake-a100")}
    assert len(set(digests.values())) == 3, digests


def test_head_then_get_by_digest(metahub):
    """containerd's way: HEAD the tag, trust Docker-Content-Digest, GET by that digest."""
    token = get_token(metahub, "cascadelake-a100")
    head = v2(metahub, "org/app/manifests/latest", token, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    digest = head.headers["Docker-Content-Digest"]
    get = v2(metahub, f"org/app/manifests/{digest}", token)
    assert get.status_code == 200, get.text
    assert sha256(get.content) == digest == get.headers["Docker-Content-Digest"]
    assert int(head.headers["Content-Length"]) == len(get.content)
    assert head.headers["Content-Type"] == get.headers["Content-Type"] == OCI_INDEX
    by_tag = v2(metahub, "org/app/manifests/latest", token)
    assert by_tag.content == get.content
    # and HEAD by digest answers the same headers
    head2 = v2(metahub, f"org/app/manifests/{digest}", token, method="HEAD")
    assert head2.status_code == 200 and head2.headers["Docker-Content-Digest"] == digest


def test_filtered_digest_is_served_to_another_machine_type_that_runs_it(metahub):
    """A filtered index is content: once made, its digest names the same bytes for any machine type that runs the
    build its clients take from it (a cascadelake runs skylake's), and is refused to one that does not."""
    digest = v2(metahub, "org/app/manifests/latest", get_token(metahub, "skylake"), method="HEAD").headers["Docker-Content-Digest"]
    r = v2(metahub, f"org/app/manifests/{digest}", get_token(metahub, "cascadelake-a100"))
    assert r.status_code == 200
    assert sha256(r.content) == digest
    r = v2(metahub, f"org/app/manifests/{digest}", get_token(metahub, "zen2"))
    assert_registry_error(r.status_code, r.content, 403, {"DENIED"})


def test_get_by_upstream_index_digest_is_verbatim(metahub, upstream, images):
    body, media_type, digest = images.tags["org/app"]
    upstream_raw = requests.get(f"{upstream.url}/v2/org/app/manifests/latest", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=10).content
    assert upstream_raw == body
    r = v2(metahub, f"org/app/manifests/{digest}", get_token(metahub, "skylake"))
    assert r.status_code == 200
    assert r.content == upstream_raw
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == media_type


def test_get_by_upstream_child_digest_is_verbatim(metahub, images):
    img = images.images["arm64"]
    r = v2(metahub, f"org/app/manifests/{img.digest}", get_token(metahub, "skylake"))
    assert r.status_code == 200
    assert r.content == img.manifest
    assert r.headers["Content-Type"] == OCI_MANIFEST


def test_docker_manifest_list_is_filtered(metahub, images):
    r = v2(metahub, "org/applist/manifests/latest", get_token(metahub, "skylake", repo="org/applist"))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == DOCKER_LIST
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    index = json.loads(r.content)
    assert index["mediaType"] == DOCKER_LIST
    assert [images.variant_of_digest(m["digest"]) for m in entries_of(index, "amd64")] == ["cpu-skylake"]
    assert all(m["mediaType"] == DOCKER_MANIFEST for m in index["manifests"])


# ---------------------------------------------------------------------------------------------
# blobs


def test_blob_redirects_to_upstream(metahub, images):
    img = images.images["cpu-skylake"]
    token = get_token(metahub, "skylake")
    for blob in (img.layer, img.config):
        digest = sha256(blob)
        for method in ("GET", "HEAD"):
            r = v2(metahub, f"org/app/blobs/{digest}", token, method=method)
            assert r.status_code == 307, r.text
            # the Location works without MetaHub's token
            fetched = requests.get(r.headers["Location"], timeout=10)
            assert fetched.status_code == 200
            assert fetched.content == blob


def test_blob_redirects_to_storage_of_redirecting_upstream(metahub_redirect, redirecting_upstream, images, tmp_path):
    img = images.images["nvcap-8.0"]
    digest = sha256(img.layer)
    r = v2(metahub_redirect, f"org/app/blobs/{digest}", get_token(metahub_redirect, "cascadelake-a100"))
    assert r.status_code == 307, r.text
    location = r.headers["Location"]
    assert location.startswith(redirecting_upstream.storage.url + "/"), location
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content == img.layer
    # and a real client pulls through it, blobs coming from the storage server
    before = len(redirecting_upstream.storage.hits)
    label, text, _ = skopeo_copy_variant(f"{metahub_redirect.host}/org/app:latest", tmp_path / "img", creds("cascadelake-a100"))
    assert label == text == "nvcap-8.0"
    assert len(redirecting_upstream.storage.hits) > before


def test_podman_and_containerd_through_redirecting_upstream(metahub_redirect, containerd, podman):
    c = creds("skylake")
    assert podman.pull_variant(f"{metahub_redirect.host}/org/app:latest", c) == "cpu-skylake"
    ns = containerd.namespace()
    ref = f"{metahub_redirect.host}/org/app:latest"
    containerd.pull(ref, ns, user=":".join(c))
    assert containerd.pulled_variant(ref, ns)[:2] == ("cpu-skylake", "cpu-skylake")


def test_layer_digest_matches(images):
    """Sanity of the test content itself: layers hash to what the manifests say."""
    for img in images.images.values():
        m = json.loads(img.manifest)
        assert m["layers"][0]["digest"] == "sha256:" + hashlib.sha256(img.layer).hexdigest()
