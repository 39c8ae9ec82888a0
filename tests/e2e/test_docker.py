"""Docker Engine, the fourth client: `docker login` and `docker pull` through metahub against an isolated dockerd
(the `docker` fixture of conftest.py) — the cases skopeo, podman and containerd cover: pull by tag of an OCI index and
of a Docker list, by the digest a tag resolved to, by an upstream child digest, another platform, a missing tag, a
wrong password, no login. Parametrized over the store kinds like test_pull."""

from __future__ import annotations

import json

import pytest

from conftest import DockerEngine, creds, get_token, skopeo_raw, v2
from test_pull import ALL_TYPES, EXPECTED_AMD64


def served_digest(hub, repo: str, machine_type: str) -> str:
    """The digest metahub answers for REPO:latest to MACHINE_TYPE (what docker must record as the image's digest)."""
    r = v2(hub, f"{repo}/manifests/latest", get_token(hub, machine_type, repo=repo), method="HEAD")
    assert r.status_code == 200, r.text
    return r.headers["Docker-Content-Digest"]


@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_docker_pull_oci_index_by_tag(metahub, docker: DockerEngine, machine_type):
    client, login = docker.login(metahub.host, creds(machine_type))
    assert b"Login Succeeded" in login.stdout
    pulled = client.pull(f"{metahub.host}/org/app:latest")
    assert pulled.label == pulled.text == EXPECTED_AMD64[machine_type]
    assert pulled.platform == "linux/amd64"
    assert pulled.repo_digest == served_digest(metahub, "org/app", machine_type)


@pytest.mark.parametrize("machine_type", ["cascadelake-a100", "skylake", "zen2"])
def test_docker_pull_docker_list_by_tag(metahub, docker: DockerEngine, machine_type):
    client, _ = docker.login(metahub.host, creds(machine_type))
    pulled = client.pull(f"{metahub.host}/org/applist:latest")
    assert pulled.label == pulled.text == EXPECTED_AMD64[machine_type]
    assert pulled.repo_digest == served_digest(metahub, "org/applist", machine_type)


def test_docker_pull_arm64(metahub, docker: DockerEngine):
    client, _ = docker.login(metahub.host, creds("graviton"))
    pulled = client.pull(f"{metahub.host}/org/app:latest", platform="linux/arm64")
    assert pulled.label == pulled.text == "arm64"
    assert pulled.platform == "linux/arm64/v8"


def test_docker_pull_by_filtered_digest(metahub, docker: DockerEngine):
    """The digest a tag resolved to is pullable later by that digest (what `docker pull NAME@DIGEST` of a
    recorded RepoDigest does)."""
    client, _ = docker.login(metahub.host, creds("broadwell-m60"))
    digest = served_digest(metahub, "org/app", "broadwell-m60")
    pulled = client.pull(f"{metahub.host}/org/app@{digest}")
    assert pulled.label == pulled.text == "cpu-broadwell"
    assert pulled.repo_digest == digest


def test_docker_pull_by_upstream_child_digest(metahub, images, docker: DockerEngine):
    """A child digest is the upstream's manifest: served verbatim to a machine type that runs it, refused to one
    that does not."""
    child = images.images["cpu-skylake"].digest
    skopeo_raw(f"{metahub.host}/org/app:latest", creds("zen2"))  # MetaHub has read the index
    docker.remove_images()  # RepoDigests below must name this pull's digest only
    client, _ = docker.login(metahub.host, creds("cascadelake-a100"))
    pulled = client.pull(f"{metahub.host}/org/app@{child}")
    assert pulled.label == pulled.text == "cpu-skylake"
    assert pulled.repo_digest == child
    client, _ = docker.login(metahub.host, creds("zen2"))
    refused = client("pull", "-q", f"{metahub.host}/org/app@{images.images['nvcap-7.0'].digest}", check=False)
    assert refused.returncode != 0 and b"denied" in refused.stderr.lower(), refused


def test_docker_pull_through_redirecting_upstream(metahub_redirect, redirecting_upstream, docker: DockerEngine):
    """Blobs come from the upstream's storage (a 307 from metahub, then one from the upstream)."""
    docker.remove_images()  # layers an earlier test pulled would not be fetched again
    client, _ = docker.login(metahub_redirect.host, creds("skylake"))
    before = len(redirecting_upstream.storage.hits)
    pulled = client.pull(f"{metahub_redirect.host}/org/app:latest")
    assert pulled.label == pulled.text == "cpu-skylake"
    assert len(redirecting_upstream.storage.hits) > before


def test_docker_pull_missing_tag(metahub, docker: DockerEngine):
    client, _ = docker.login(metahub.host, creds("skylake"))
    r = client("pull", f"{metahub.host}/org/app:no-such-tag", check=False)
    assert r.returncode != 0
    assert b"manifest unknown" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("who", ["wrong-password", "unknown-account"])
def test_docker_login_refused(metahub, docker: DockerEngine, who):
    login, password = creds("skylake")
    bad = (login, password + "-wrong") if who == "wrong-password" else ("nobody-here", password)
    client, r = docker.login(metahub.host, bad, check=False)
    assert r.returncode != 0
    assert b"unauthorized" in r.stderr.lower(), r.stderr
    # nothing stored for the host: a later pull from this config is anonymous, and refused
    config = client.config / "config.json"
    auths = json.loads(config.read_text()).get("auths", {}) if config.exists() else {}
    assert metahub.host not in auths
    assert client("pull", f"{metahub.host}/org/app:latest", check=False).returncode != 0


def test_docker_pull_without_login(metahub, docker: DockerEngine):
    r = docker.client()("pull", f"{metahub.host}/org/app:latest", check=False)
    assert r.returncode != 0
    assert b"unauthorized" in r.stderr.lower() or b"no basic auth credentials" in r.stderr.lower(), r.stderr
