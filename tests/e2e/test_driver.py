"""The driver dimension (issue 26): CUDA builds whose configs carry NVIDIA's own `NVIDIA_REQUIRE_CUDA` strings (the
11.8, 12.1, 12.4 and 12.6 base images, functions/core/testdata/nvidia_require_cuda.json) and a CPU build, published
with `metahub index create` and no feature at all, pulled through `metahub serve` by machine types on driver branches
470, 525, 535, 550 and 560, with and without the datacenter brand. Each gets the newest build its driver starts, as
nvidia-container-toolkit decides; skopeo and podman pull it. The upstream redirects blobs to storage, so MetaHub's
config reads follow the redirect; they are counted on the metrics endpoint: one per child, none on a warm pull.

The table (also in docs/nodes.md, "Drivers"):
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from conftest import METAHUB_BIN, creds, free_port, get_token, run, skopeo_copy_variant, start_configured_metahub, v2
from registry_push import OCI_INDEX, Registry, build_image, sha256

REPO = "driver/torch"
REQUIRE = json.loads((Path(__file__).parents[2] / "functions/core/testdata/nvidia_require_cuda.json").read_text())
BUILDS = {"cpu": None, "cu118": REQUIRE["11.8"], "cu121": REQUIRE["12.1"], "cu124": REQUIRE["12.4"], "cu126": REQUIRE["12.6"]}

# machine type: (features, the build it gets). The cuda: of each driver is the "CUDA Version" nvidia-smi prints.
TABLE = {
    "cpu-only": ([], "cpu"),
    "r470": (["cuda:11.4", "driver:470.239.06"], "cpu"),
    "r470-tesla": (["cuda:11.4", "driver:470.239.06", "gpu-brand:tesla"], "cu126"),
    "r525": (["cuda:12.0", "driver:525.147.05"], "cu118"),
    "r525-tesla": (["cuda:12.0", "driver:525.147.05", "gpu-brand:tesla"], "cu124"),
    "r535": (["cuda:12.2", "driver:535.183.01"], "cu121"),
    "r535-tesla": (["cuda:12.2", "driver:535.183.01", "gpu-brand:tesla"], "cu126"),
    "r550": (["cuda:12.4", "driver:550.127.05"], "cu124"),
    "r550-tesla": (["cuda:12.4", "driver:550.127.05", "gpu-brand:tesla"], "cu126"),
    "r560": (["cuda:12.6", "driver:560.35.03"], "cu126"),
    "r560-tesla": (["cuda:12.6", "driver:560.35.03", "gpu-brand:tesla"], "cu126"),
}
MACHINE_TYPES = {name: (features, "best") for name, (features, _) in TABLE.items()}
__doc__ += "\n".join(f"    {name:<11} {' '.join(f) or '(no GPU)':<58} -> {build}" for name, (f, build) in TABLE.items())


@pytest.fixture(scope="module")
def published(redirecting_upstream):
    """Each build pushed under its tag, then one index of all of them made by `metahub index create`, no feature."""
    reg = Registry(redirecting_upstream.url)
    digests = {}
    for build, require in BUILDS.items():
        env = ["PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/bin:/bin"]
        if require:
            env.append(f"NVIDIA_REQUIRE_CUDA={require}")
        img = build_image(build, env=env)
        reg.push_image(REPO, img, ref=build)
        digests[build] = img.digest
    froms = [arg for build in BUILDS for arg in ("--from", f"{REPO}:{build}")]
    run([METAHUB_BIN, "index", "create", f"{REPO}:latest", *froms, "--upstream", redirecting_upstream.url])
    index = reg.get_manifest(REPO, "latest").json()
    assert index["mediaType"] == OCI_INDEX
    assert all("features" not in m["platform"] for m in index["manifests"]), index
    return digests


@pytest.fixture(scope="module")
def hub(workdir, redirecting_upstream, published):
    port = free_port()
    # --tag-ttl 0: every pull checks its tag upstream, so a warm pull's upstream requests can be counted exactly
    h = start_configured_metahub(workdir, redirecting_upstream, "metahub-driver",
                                 ["--metrics-listen", f"127.0.0.1:{port}", "--tag-ttl", "0"], machine_types=MACHINE_TYPES)
    h.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield h
    h.stop()


def upstream_requests(hub, kind: str) -> float:
    text = requests.get(hub.metrics_url, timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(
        r'^metahub_upstream_requests_total\{[^}]*kind="' + kind + r'"[^}]*\} ([0-9.]+)$', text, re.M))


def served(hub, machine_type: str) -> dict:
    r = v2(hub, f"{REPO}/manifests/latest", get_token(hub, login=creds(machine_type), repo=REPO))
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(r.content)
    return json.loads(r.content)


def test_each_machine_type_is_served_the_newest_build_its_driver_starts(hub, published):
    by_digest = {d: b for b, d in published.items()}
    got = {name: [by_digest[m["digest"]] for m in served(hub, name)["manifests"]] for name in TABLE}
    assert got == {name: [build] for name, (_, build) in TABLE.items()}
    # one config read per child, following the upstream's redirect to storage, whatever the number of machine types
    assert upstream_requests(hub, "config") == len(BUILDS)


def test_a_warm_pull_reads_no_config(hub, published):
    for name in TABLE:
        served(hub, name)
    before = {kind: upstream_requests(hub, kind) for kind in ("config", "get", "head")}
    for name in TABLE:
        served(hub, name)
    after = {kind: upstream_requests(hub, kind) for kind in ("config", "get", "head")}
    assert after == {**before, "head": before["head"] + len(TABLE)}, (before, after)


@pytest.mark.parametrize("machine_type", sorted(TABLE))
def test_skopeo_pulls_the_build_of_the_table(hub, published, machine_type, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{hub.host}/{REPO}:latest", tmp_path / "skopeo", creds(machine_type))
    assert (label, text) == (TABLE[machine_type][1],) * 2


@pytest.mark.parametrize("machine_type", sorted(TABLE))
def test_podman_pulls_the_build_of_the_table(hub, published, machine_type, podman):
    assert podman.pull_variant(f"{hub.host}/{REPO}:latest", creds(machine_type)) == TABLE[machine_type][1]


def test_explain_says_why_in_the_driver_s_words(hub, published, redirecting_upstream):
    p = run([METAHUB_BIN, "explain", "r535", f"{REPO}:latest", "--json", "--upstream", redirecting_upstream.url,
             "--store", hub.store])
    out = json.loads(p.stdout)
    reasons = {e["digest"]: e["reason"] for e in out["entries"]}
    assert reasons[published["cu124"]] == (
        "needs cuda>=12.4 (or driver 470.x, 525.x, 535.x, with the compat libraries); "
        "this node's driver supports cuda 12.2 (driver 535.183.01)"
    )
    assert out["served"] == [published["cu121"]]
    cpu = run([METAHUB_BIN, "explain", "cpu-only", f"{REPO}:latest", "--json", "--upstream", redirecting_upstream.url,
               "--store", hub.store])
    reasons = {e["digest"]: e["reason"] for e in json.loads(cpu.stdout)["entries"]}
    assert reasons[published["cu118"]].endswith("the machine type names no GPU driver (cuda:, driver:)")


def test_driver_features_are_validated_with_suggestions(hub):
    p = run([METAHUB_BIN, "machine-type", "put", "typo", "--feature", "gpu-brand:tesal", "--store", hub.store], check=False)
    assert p.returncode != 0
    assert "did you mean tesla" in p.stderr.decode(), p.stderr
    p = run([METAHUB_BIN, "machine-type", "put", "typo", "--feature", "cuda:12", "--store", hub.store], check=False)
    assert p.returncode != 0 and "cuda:12.4" in p.stderr.decode(), p.stderr


@pytest.mark.parametrize("machine_type", sorted(TABLE))
def test_ctr_pulls_the_build_of_the_table(hub, published, machine_type, containerd):
    ref = f"{hub.host}/{REPO}:latest"
    ns = containerd.namespace()
    containerd.pull(ref, ns, user=":".join(creds(machine_type)))
    label, text, _ = containerd.pulled_variant(ref, ns)
    assert (label, text) == (TABLE[machine_type][1],) * 2
