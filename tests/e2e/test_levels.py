"""CPU levels published as `platform.variant` (buildx `linux/amd64/v3`, GOAMD64): every real client, with its default
platform, pulls the build MetaHub chose for its machine type (issue 11).

The index is shaped as people publish it: amd64 with no variant, amd64/v2, v3, v4, amd64/v3 + nvcap:8.0 and arm64/v8,
as an OCI index and as a Docker manifest list. The client matrix is parametrized over CLIENTS: a client with a
fixture of the same name whose `pull_variant(ref, creds)` returns the pulled image's `variant` label joins it by
adding its name (docker: the Docker Engine fixture in conftest.py).
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_registry_error, creds, get_token, pull_variant, start_configured_metahub, v2
from registry_push import DOCKER_LIST, OCI_INDEX, Registry, build_image, canonical, descriptor, sha256

CLIENTS = ["skopeo", "podman", "ctr", "docker"]

MACHINE_TYPES = {
    "core2": (["cpu:core2"], "best"),
    "nehalem": (["cpu:nehalem"], "best"),
    "haswell": (["cpu:haswell"], "best"),
    "icelake": (["cpu:icelake"], "best"),
    "zen4": (["cpu:zen4"], "best"),
    "haswell-a100": (["cpu:haswell", "nvcap:8.0"], "best"),
    "exact-haswell": (["cpu:haswell"], "exact"),
}

# (label, architecture, variant, features), in index order
LEVEL_ENTRIES = [
    ("lvl-baseline", "amd64", "", []),
    ("lvl-v2", "amd64", "v2", []),
    ("lvl-v3", "amd64", "v3", []),
    ("lvl-v4", "amd64", "v4", []),
    ("lvl-v3-nvcap80", "amd64", "v3", ["nvcap:8.0"]),
    ("lvl-arm64", "arm64", "v8", []),
]

EXPECTED = {
    "core2": "lvl-baseline",
    "nehalem": "lvl-v2",
    "haswell": "lvl-v3",
    "icelake": "lvl-v4",
    "zen4": "lvl-v4",
    "haswell-a100": "lvl-v3-nvcap80",
    "exact-haswell": "lvl-v3",
}

REPOS = {"levels/app": OCI_INDEX, "levels/applist": DOCKER_LIST}


def level_platform(arch: str, variant: str, features: list[str]) -> dict:
    p = {"architecture": arch, "os": "linux"}
    if variant:
        p["variant"] = variant
    if features:
        p["features"] = features
    return p


def push_index(reg: Registry, repo: str, media_type: str, entries, tag: str = "latest") -> tuple[bytes, str, dict]:
    """Push one image per entry and an index of them; returns (index bytes, digest, label -> image digest)."""
    docker = media_type == DOCKER_LIST
    manifests, digests = [], {}
    for label, arch, variant, features in entries:
        img = build_image(label, arch, docker=docker)
        reg.push_image(repo, img)
        manifests.append(descriptor(img, level_platform(arch, variant, features)))
        digests[label] = img.digest
    body = canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})
    return body, reg.push_manifest(repo, tag, body, media_type), digests


@pytest.fixture(scope="module")
def levels(upstream):
    reg = Registry(upstream.url)
    return {repo: push_index(reg, repo, mt, LEVEL_ENTRIES) for repo, mt in REPOS.items()}


@pytest.fixture(scope="module")
def hub(workdir, upstream, levels):
    h = start_configured_metahub(workdir, upstream, "metahub-levels", machine_types=MACHINE_TYPES)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def refusing_hub(workdir, upstream, levels):
    h = start_configured_metahub(workdir, upstream, "metahub-refuse", serve_args=["--index-digest-pulls", "refuse"],
                                 machine_types=MACHINE_TYPES)
    yield h
    h.stop()


def served_index(hub, repo: str, machine_type: str) -> dict:
    r = v2(hub, f"{repo}/manifests/latest", get_token(hub, login=creds(machine_type), repo=repo))
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    return json.loads(r.content)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
@pytest.mark.parametrize("repo", sorted(REPOS))
def test_one_amd64_build_per_machine_under_the_plain_platform(hub, levels, repo, machine_type):
    index = served_index(hub, repo, machine_type)
    amd64 = [m for m in index["manifests"] if m["platform"]["architecture"] == "amd64"]
    assert [m["digest"] for m in amd64] == [levels[repo][2][EXPECTED[machine_type]]], index
    # the chosen level build stands under the plain platform, every other field as published
    assert "variant" not in amd64[0]["platform"], amd64[0]
    arm64 = [m for m in index["manifests"] if m["platform"]["architecture"] == "arm64"]
    assert [m["platform"] for m in arm64] == [{"architecture": "arm64", "os": "linux", "variant": "v8"}]


@pytest.mark.parametrize("machine_type", ["core2", "nehalem", "icelake"])
@pytest.mark.parametrize("repo", sorted(REPOS))
@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_pulls_the_chosen_build(request, hub, levels, client, repo, machine_type, tmp_path):
    ref = f"{hub.host}/{repo}:latest"
    assert pull_variant(request, client, ref, creds(machine_type), tmp_path) == EXPECTED[machine_type]


@pytest.mark.parametrize("client", CLIENTS)
def test_without_metahub_clients_refuse_a_level_only_index(request, upstream, client, tmp_path):
    """Why the served copy drops the variant: straight from the upstream, an index whose only amd64 entry is
    `amd64/v3` is refused by every client's default platform (containerd/platforms and containers/image compare
    variants; neither detects an amd64 level)."""
    reg = Registry(upstream.url)
    push_index(reg, "levels/v3only", OCI_INDEX, [("lvl-v3", "amd64", "v3", []), ("lvl-arm64", "arm64", "v8", [])])
    with pytest.raises(AssertionError, match="no match for platform|no image found|no matching manifest"):
        pull_variant(request, client, f"{upstream.host}/levels/v3only:latest", None, tmp_path)


def test_explain_names_levels(workdir, hub, levels):
    hub.stop()  # the file store is single-process
    try:
        out = hub.cli("explain", "haswell", "levels/app:latest", "--upstream", hub.upstream.url, "--json")
    finally:
        hub.start(workdir)
    doc = json.loads(out.stdout)
    reasons = {e["digest"]: e["reason"] for e in doc["entries"]}
    digests = levels["levels/app"][2]
    assert reasons[digests["lvl-v4"]] == "v4 needs x86_64_v4; haswell is x86_64_v3"
    assert reasons[digests["lvl-v3"]] == "v3 needs x86_64_v3; haswell runs it"
    assert doc["served"] == [digests["lvl-v3"], digests["lvl-arm64"]]
    levels_by_digest = {e["digest"]: e["level"] for e in doc["entries"]}
    assert levels_by_digest[digests["lvl-v4"]] == "x86_64_v4"


# ---------------------------------------------------------------------------------------------
# nothing dropped: the upstream's bytes and digest


def test_an_index_filtering_keeps_whole_is_served_verbatim(hub, upstream):
    reg = Registry(upstream.url)
    amd64, arm64 = build_image("plain-amd64", "amd64"), build_image("plain-arm64", "arm64")
    reg.push_image("levels/plain", amd64)
    reg.push_image("levels/plain", arm64)
    # spelled with spaces, as some tools write it: re-serializing would change the digest
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(amd64, level_platform("amd64", "", [])), descriptor(arm64, level_platform("arm64", "v8", []))]},
        indent=1).encode()
    digest = reg.push_manifest("levels/plain", "latest", body, OCI_INDEX)
    token = get_token(hub, login=creds("icelake"), repo="levels/plain")
    for method in ("GET", "HEAD"):
        r = v2(hub, "levels/plain/manifests/latest", token, method=method)
        assert r.status_code == 200, r.text
        assert r.headers["Docker-Content-Digest"] == digest
    assert v2(hub, "levels/plain/manifests/latest", token).content == body


# ---------------------------------------------------------------------------------------------
# pins: a pull by the upstream index's digest


def test_pin_is_served_verbatim_by_default(hub, levels):
    body, digest, _ = levels["levels/app"]
    r = v2(hub, f"levels/app/manifests/{digest}", get_token(hub, login=creds("icelake"), repo="levels/app"))
    assert r.status_code == 200 and r.content == body
    assert r.headers["Docker-Content-Digest"] == digest


def test_pin_is_refused_naming_the_child_to_pull(refusing_hub, levels):
    hub = refusing_hub
    body, digest, children = levels["levels/app"]
    token = get_token(hub, login=creds("icelake"), repo="levels/app")
    r = v2(hub, f"levels/app/manifests/{digest}", token)
    err = assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
    assert "pull by tag" in err["message"] and f"levels/app@{children['lvl-v4']}" in err["message"], err
    # the build an icelake's clients take: its amd64 one (an arm64 build is no pull for an amd64 machine)
    assert err["detail"]["pullInstead"] == [f"levels/app@{children['lvl-v4']}"]
    # what it names works, and so do the tag and the generated index's own digest (containerd's follow-up GET)
    assert v2(hub, f"levels/app/manifests/{children['lvl-v4']}", token).status_code == 200
    by_tag = v2(hub, "levels/app/manifests/latest", token)
    assert by_tag.status_code == 200
    generated = by_tag.headers["Docker-Content-Digest"]
    assert v2(hub, f"levels/app/manifests/{generated}", token).content == by_tag.content


def test_refuse_still_serves_a_pin_filtering_would_not_change(refusing_hub, upstream):
    reg = Registry(upstream.url)
    img = build_image("pin-amd64", "amd64")
    body, digest, _ = push_index(reg, "levels/pinned", OCI_INDEX, [("pin-amd64", "amd64", "", [])])
    r = v2(refusing_hub, f"levels/pinned/manifests/{digest}", get_token(refusing_hub, login=creds("core2"), repo="levels/pinned"))
    assert r.status_code == 200 and r.content == body, r.text
    assert img.digest in r.text


@pytest.mark.parametrize("client", ["skopeo", "ctr"])
def test_clients_see_the_refusal(request, refusing_hub, levels, client, tmp_path):
    _, digest, _ = levels["levels/app"]
    with pytest.raises(AssertionError, match="(?i)denied|403"):
        pull_variant(request, client, f"{refusing_hub.host}/levels/app@{digest}", creds("icelake"), tmp_path)

