"""The harness itself: every client pulls the test content straight from the upstream registries,
anonymously. Without MetaHub in the way, clients take the first entry that fits os/arch — so these
get the generic images, which is the very problem MetaHub solves. If these fail, the harness (or the
machine) is broken, not MetaHub."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from conftest import skopeo_copy_variant, skopeo_raw
from registry_push import ALL_MANIFEST_TYPES


@pytest.fixture(params=["plain", "redirect"])
def any_upstream(request, upstream, redirecting_upstream, images):
    return upstream if request.param == "plain" else redirecting_upstream


def test_upstream_holds_the_pushed_bytes(any_upstream, images):
    for repo, (body, media_type, digest) in images.tags.items():
        r = requests.get(f"{any_upstream.url}/v2/{repo}/manifests/latest", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.content == body
        assert r.headers["Docker-Content-Digest"] == digest == "sha256:" + hashlib.sha256(r.content).hexdigest()
        assert r.headers["Content-Type"] == media_type


def test_redirecting_upstream_redirects_blobs_to_the_file_server(redirecting_upstream, images):
    img = images.images["cpu-skylake"]
    digest = "sha256:" + hashlib.sha256(img.layer).hexdigest()
    r = requests.get(f"{redirecting_upstream.url}/v2/org/app/blobs/{digest}", allow_redirects=False, timeout=10)
    assert r.status_code == 307
    hexd = digest.split(":")[1]
    assert r.headers["Location"] == f"{redirecting_upstream.storage.url}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
    blob = requests.get(r.headers["Location"], timeout=10)
    assert blob.status_code == 200 and blob.content == img.layer


@pytest.mark.parametrize("repo", ["org/app", "org/applist"])
def test_skopeo_direct(any_upstream, repo, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{any_upstream.host}/{repo}:latest", tmp_path / "amd64")
    assert label == text == "generic-amd64"
    label, text, _ = skopeo_copy_variant(f"{any_upstream.host}/{repo}:latest", tmp_path / "arm64", arch="arm64")
    assert label == text == "arm64"


def test_skopeo_direct_single_and_raw(upstream, images, tmp_path):
    label, text, manifest = skopeo_copy_variant(f"{upstream.host}/org/single:latest", tmp_path / "s")
    assert label == text == "single"
    raw = skopeo_raw(f"{upstream.host}/org/app:latest")
    assert raw == images.tags["org/app"][0]
    child = images.images["nvcap-8.0"].digest
    label, text, _ = skopeo_copy_variant(f"{upstream.host}/org/app@{child}", tmp_path / "c")
    assert label == text == "nvcap-8.0"


@pytest.mark.parametrize("repo", ["org/app", "org/applist"])
def test_podman_direct(any_upstream, repo, podman):
    assert podman.pull_variant(f"{any_upstream.host}/{repo}:latest") == "generic-amd64"
    assert podman.pull_variant(f"{any_upstream.host}/{repo}:latest", arch="arm64") == "arm64"


def test_podman_direct_by_digest(upstream, images, podman):
    child = images.images["cpu-broadwell"].digest
    assert podman.pull_variant(f"{upstream.host}/org/app@{child}") == "cpu-broadwell"


@pytest.mark.parametrize("repo", ["org/app", "org/applist", "org/single"])
def test_containerd_direct(any_upstream, images, containerd, repo):
    ns = containerd.namespace()
    ref = f"{any_upstream.host}/{repo}:latest"
    containerd.pull(ref, ns)
    label, text, top = containerd.pulled_variant(ref, ns)
    expected = "single" if repo == "org/single" else "generic-amd64"
    assert label == text == expected
    assert containerd.image_target(ref, ns) == images.tags[repo][2]


def test_containerd_direct_by_digest(upstream, images, containerd):
    ns = containerd.namespace()
    digest = images.tags["org/app"][2]
    ref = f"{upstream.host}/org/app@{digest}"
    containerd.pull(ref, ns, platform="linux/arm64")
    label, text, top = containerd.pulled_variant(ref, ns, arch="arm64")
    assert label == text == "arm64"
    assert json.loads(images.tags["org/app"][0]) == top


@pytest.mark.parametrize("repo", ["org/app", "org/applist"])
def test_docker_direct(any_upstream, docker, repo):
    client = docker.client()
    pulled = client.pull(f"{any_upstream.host}/{repo}:latest")
    assert pulled.label == pulled.text == "generic-amd64"
    pulled = client.pull(f"{any_upstream.host}/{repo}:latest", platform="linux/arm64")
    assert pulled.label == pulled.text == "arm64"
