"""Never a build the machine cannot run, whatever reference it pulls (issue 25).

Clusters pin digests that another identity resolved (Kyverno's mutateDigest, Flux and Argo CD image automation,
Helm values, CI): one machine type resolves, every node pulls that digest. Here a resolver is one machine type
(`skopeo inspect` as it), the pullers are other types pinned to what it got, and each real client either gets a
build its machine runs or a clear refusal — never a build it cannot run.

The index is the issue's: generic, broadwell, skylake, skylake+V100 and zen3 builds under the plain linux/amd64
platform with features, and an arm64 build; a second index lists the skylake build first.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_registry_error, creds, get_token, pull_variant, skopeo_raw, start_configured_metahub, v2
from registry_push import OCI_INDEX, Registry, build_image, canonical, descriptor, sha256

CLIENTS = ["skopeo", "podman", "ctr", "docker"]

MACHINE_TYPES = {
    "zen2": (["cpu:zen2"], "best"),
    "zen4": (["cpu:zen4"], "best"),
    "haswell": (["cpu:haswell"], "best"),
    "broadwell": (["cpu:broadwell"], "best"),
    "clx": (["cpu:cascadelake"], "best"),
    "resolver": ([], "unfiltered"),
}

# (label, architecture, features) in index order
BUILDS = [
    ("pin-generic", "amd64", []),
    ("pin-broadwell", "amd64", ["cpu:broadwell"]),
    ("pin-skylake", "amd64", ["cpu:skylake"]),
    ("pin-v100", "amd64", ["cpu:skylake", "nvcap:7.0"]),
    ("pin-zen3", "amd64", ["cpu:zen3"]),
    ("pin-arm64", "arm64", []),
]
SKYLAKE_FIRST = [BUILDS[2], BUILDS[0], BUILDS[5]]


def push(reg: Registry, repo: str, builds) -> tuple[str, dict[str, str]]:
    manifests, digests = [], {}
    for label, arch, features in builds:
        img = build_image(label, arch)
        reg.push_image(repo, img)
        platform = {"architecture": arch, "os": "linux", **({"features": features} if features else {})}
        manifests.append(descriptor(img, platform))
        digests[label] = img.digest
    body = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    return reg.push_manifest(repo, "latest", body, OCI_INDEX), digests


@pytest.fixture(scope="module")
def pushed(upstream):
    reg = Registry(upstream.url)
    return {"pins/app": push(reg, "pins/app", BUILDS), "pins/skyfirst": push(reg, "pins/skyfirst", SKYLAKE_FIRST)}


@pytest.fixture(scope="module")
def hub(workdir, upstream, pushed):
    h = start_configured_metahub(workdir, upstream, "metahub-pins", machine_types=MACHINE_TYPES)
    yield h
    h.stop()


def resolve(hub, machine_type: str, repo: str = "pins/app") -> str:
    """What a resolver of MACHINE_TYPE pins: the digest its `skopeo inspect --raw` of the tag hashes to."""
    return sha256(skopeo_raw(f"{hub.host}/{repo}:latest", creds(machine_type)))


def pin_of(hub, pushed, what: str) -> str:
    """`resolved:TYPE` (another type's answer by tag), `child:LABEL`, `upstream:REPO` (the upstream index)."""
    kind, name = what.split(":", 1)
    if kind == "resolved":
        return resolve(hub, name)
    if kind == "child":
        resolve(hub, "clx")  # MetaHub has read the index, as any pull by tag does
        return pushed["pins/app"][1][name]
    return pushed[name][0]


# (pinned reference, puller, the build it gets or None for a refusal)
CASES = [
    ("resolved:zen4", "zen2", None),  # zen4 got the zen3 build; zen2 cannot run it
    ("resolved:zen4", "zen4", "pin-zen3"),
    # refusals before the pulls that succeed with the same digest: Docker Engine 20.10 was seen to answer a digest it
    # had pulled a moment before from its own store, without asking the registry, even after `image prune --all`
    ("resolved:broadwell", "haswell", None),
    ("resolved:broadwell", "clx", "pin-broadwell"),  # a safe pin keeps working
    ("resolved:resolver", "zen2", "pin-generic"),  # the whole index: every client takes the generic build first
    ("child:pin-skylake", "zen2", None),
    ("child:pin-skylake", "clx", "pin-skylake"),
    ("upstream:pins/skyfirst", "zen2", None),  # clients would take the skylake build, listed first
    ("upstream:pins/skyfirst", "clx", "pin-skylake"),
]


# `ctr images pull` (containerd's Fetch, unlike the Pull that CRI, and so the kubelet, uses) fetches the manifest of
# every child of the host's platform, not only the one it unpacks: pinned to a whole index that lists builds the
# machine cannot run, ctr meets their refusal, even though the build it would run is the generic one.
CTR_FETCHES_EVERY_CHILD = {("resolved:resolver", "zen2")}


@pytest.mark.parametrize("pinned,puller,gets", CASES, ids=[f"{p}-as-{m}" for p, m, _ in CASES])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_pinned_digest_is_a_build_the_puller_runs_or_a_refusal(request, hub, pushed, client, pinned, puller, gets, tmp_path):
    if client == "ctr" and (pinned, puller) in CTR_FETCHES_EVERY_CHILD:
        gets = None
    repo = "pins/skyfirst" if pinned == "upstream:pins/skyfirst" else "pins/app"
    ref = f"{hub.host}/{repo}@{pin_of(hub, pushed, pinned)}"
    if gets is not None:
        assert pull_variant(request, client, ref, creds(puller), tmp_path) == gets
        return
    with pytest.raises(AssertionError) as refused:
        pull_variant(request, client, ref, creds(puller), tmp_path)
    # what each client shows of the refusal (README "Pinning"): the registry's DENIED, or its 403
    assert any(word in str(refused.value).lower() for word in ("denied", "403", "forbidden")), refused.value


@pytest.mark.parametrize("method", ("GET", "HEAD"))
def test_the_refusal_says_what_to_pull_instead(hub, pushed, method):
    zen4 = resolve(hub, "zen4")
    token = get_token(hub, login=creds("zen2"), repo="pins/app")
    r = v2(hub, f"pins/app/manifests/{zen4}", token, method=method)
    if method == "HEAD":
        assert r.status_code == 403 and not r.content
        return
    err = assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
    generic = pushed["pins/app"][1]["pin-generic"]
    assert "cpu:zen3" in err["message"] and "pull by tag" in err["message"], err
    assert err["detail"]["pullInstead"] == [f"pins/app@{generic}"]
    # it names zen2's own build and nobody else's: not the type that resolved the digest, not the upstream
    assert "zen4" not in json.dumps(err) and hub.upstream.host not in json.dumps(err), err
    assert v2(hub, f"pins/app/manifests/{generic}", token).status_code == 200
    # an unknown digest answers as before
    unknown = "sha256:" + "0" * 64
    assert_registry_error(*(lambda r: (r.status_code, r.content))(v2(hub, f"pins/app/manifests/{unknown}", token)), 404, {"MANIFEST_UNKNOWN"})


def test_a_resolver_type_gets_the_upstream_index_by_tag(hub, pushed):
    assert resolve(hub, "resolver") == pushed["pins/app"][0]


def test_pins_prints_the_digest_each_type_is_served(workdir, hub, pushed):
    served = {mt: v2(hub, "pins/app/manifests/latest", get_token(hub, login=creds(mt), repo="pins/app"), method="HEAD")
              .headers["Docker-Content-Digest"] for mt in MACHINE_TYPES}
    hub.stop()  # the file store is single-process
    try:
        out = hub.cli("pins", "pins/app:latest", "--upstream", hub.upstream.url, "--json")
        table = hub.cli("pins", "pins/app:latest", "--upstream", hub.upstream.url).stdout.decode()
    finally:
        hub.start(workdir)
    doc = json.loads(out.stdout)
    rows = {row["machineType"]: row for row in doc["pins"]}
    builds = pushed["pins/app"][1]
    assert {mt: rows[mt]["digest"] for mt in MACHINE_TYPES} == served
    assert [b["digest"] for b in rows["zen4"]["builds"]] == [builds["pin-zen3"]]
    assert [b["digest"] for b in rows["clx"]["builds"]] == [builds["pin-skylake"]]
    assert [b["digest"] for b in rows["zen2"]["builds"]] == [builds["pin-generic"]]
    assert builds["pin-zen3"] in table and "MACHINE TYPE" in table
