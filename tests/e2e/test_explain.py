"""`metahub explain TYPE IMAGE` against the real upstream registry: every entry with its verdict, and the entry served
is the one a pull through `metahub serve` gets. Explain runs on its own file store (the embedded store is single
process, and the served front holds its own), with the same machine types."""

from __future__ import annotations

import json
import re

import pytest

from conftest import MACHINE_TYPES, METAHUB_BIN, Metahub, get_token, run, v2
from registry_push import DOCKER_LIST, OCI_INDEX, OCI_MANIFEST
from test_pull import EXPECTED_AMD64

ALL_TYPES = sorted(MACHINE_TYPES)


@pytest.fixture(scope="session")
def explain_store(workdir, upstream, images) -> Metahub:
    """A store of its own holding MACHINE_TYPES; never served, only read by `explain`."""
    d = workdir / "explain-store"
    d.mkdir()
    hub = Metahub(port=0, store=f"file:{d / 'store.redb'}", upstream=upstream)
    for name, (features, match) in MACHINE_TYPES.items():
        hub.put_machine_type(name, features, match)
    return hub


def explain(hub: Metahub, machine_type: str, image: str, *flags: str, check: bool = True):
    return run(
        [METAHUB_BIN, "explain", machine_type, image, "--store", hub.store, "--upstream", hub.upstream.url, *flags],
        env={"RUST_LOG": "warn"},
        check=check,
    )


def explain_json(hub: Metahub, machine_type: str, image: str) -> dict:
    return json.loads(explain(hub, machine_type, image, "--json").stdout)


@pytest.mark.parametrize("machine_type", ALL_TYPES)
def test_explain_serves_what_a_pull_gets(explain_store, metahub_file, images, machine_type):
    doc = explain_json(explain_store, machine_type, "org/app:latest")
    assert doc["index"] is True
    assert doc["mediaType"] == OCI_INDEX
    assert doc["digest"] == images.tags["org/app"][2]
    assert doc["machineType"] == {"name": machine_type, "features": MACHINE_TYPES[machine_type][0], "match": MACHINE_TYPES[machine_type][1]}

    entries = doc["entries"]
    # every entry of the upstream index, in its order
    upstream_index = json.loads(images.tags["org/app"][0])
    assert [e["digest"] for e in entries] == [m["digest"] for m in upstream_index["manifests"]]
    for e in entries:
        assert e["reason"], e
        assert not e["served"] or e["fits"], e

    served_amd64 = [images.variant_of_digest(e["digest"]) for e in entries if e["served"] and e["architecture"] == "amd64"]
    assert served_amd64 == [EXPECTED_AMD64[machine_type]]
    assert [images.variant_of_digest(e["digest"]) for e in entries if e["served"] and e["architecture"] == "arm64"] == ["arm64"]
    attestation = next(e for e in entries if e["attests"])
    assert attestation["served"] == (EXPECTED_AMD64[machine_type] == "cpu-skylake")

    # the filtered index explain names is, byte for byte, the one `serve` answers for this machine type
    r = v2(metahub_file, "org/app/manifests/latest", get_token(metahub_file, machine_type), method="HEAD")
    assert r.status_code == 200, r.text
    assert doc["filteredDigest"] == r.headers["Docker-Content-Digest"]


def test_explain_says_why(explain_store, images):
    doc = explain_json(explain_store, "zen2", "org/app:latest")
    by_variant = {images.variant_of_digest(e["digest"]): e for e in doc["entries"] if not e["attests"]}
    assert by_variant["cpu-skylake"]["fits"] is False
    assert "cpu:zen2 does not descend from it" in by_variant["cpu-skylake"]["reason"]
    assert by_variant["nvcap-7.0"]["fits"] is False
    assert by_variant["generic-amd64"]["fits"] is True and by_variant["generic-amd64"]["served"] is False
    assert "more specific" in by_variant["generic-amd64"]["reason"]
    assert by_variant["cpu-x86_64_v3"]["served"] is True

    doc = explain_json(explain_store, "broadwell-m60", "org/app:latest")
    nv8 = next(e for e in doc["entries"] if images.variant_of_digest(e["digest"]) == "nvcap-8.0")
    assert nv8["fits"] is False and "cpu:cascadelake" in nv8["reason"]


def test_explain_table(explain_store, images):
    out = explain(explain_store, "cascadelake-a100", "org/app:latest").stdout.decode()
    lines = out.splitlines()
    assert lines[0].startswith("org/app:latest sha256:") and OCI_INDEX in lines[0], out
    assert lines[1] == "machine type cascadelake-a100 [cpu:cascadelake, nvcap:8.6] (best)", out
    header = next(i for i, line in enumerate(lines) if line.startswith("DIGEST"))
    assert lines[header].split() == ["DIGEST", "PLATFORM", "REQUIRES", "FITS", "SERVED", "WHY"], out
    rows = lines[header + 1 : header + 1 + len(json.loads(images.tags["org/app"][0])["manifests"])]
    for row in rows:
        assert re.match(r"^sha256:[0-9a-f]{12}\s", row), row
    served = [r for r in rows if re.search(r"\s(yes|no)\s+yes\s", r)]
    assert len(served) == 2, out  # the nvcap-8.0 amd64 entry and arm64
    nv8 = images.images["nvcap-8.0"].digest.split(":")[1][:12]
    assert any(nv8 in r and "cpu:cascadelake,nvcap:8.0" in r for r in served), out
    assert lines[-1].startswith("served: 2 of 8 entries, as index sha256:"), out


def test_explain_docker_manifest_list(explain_store, images):
    doc = explain_json(explain_store, "cascadelake-a100", "org/applist:latest")
    assert doc["mediaType"] == DOCKER_LIST
    served = [images.variant_of_digest(e["digest"]) for e in doc["entries"] if e["served"]]
    assert served == ["nvcap-8.0", "arm64"]


def test_explain_nothing_fits(explain_store):
    # org/featuredonly has no generic entry and nothing for a neoverse_v1 machine type
    doc = explain_json(explain_store, "graviton", "org/featuredonly:latest")
    assert not any(e["served"] for e in doc["entries"])
    assert doc["filteredDigest"] is None
    assert doc["error"]["code"] == "MANIFEST_UNKNOWN"
    assert "graviton" in doc["error"]["message"]
    out = explain(explain_store, "graviton", "org/featuredonly:latest").stdout.decode()
    assert out.splitlines()[-1].startswith("served: nothing; a pull answers MANIFEST_UNKNOWN"), out


def test_explain_single_manifest_passes_through(explain_store, images):
    doc = explain_json(explain_store, "skylake", "org/single:latest")
    assert doc["index"] is False and doc["passthrough"] is True
    assert doc["mediaType"] == OCI_MANIFEST
    assert doc["digest"] == images.tags["org/single"][2]
    out = explain(explain_store, "skylake", "org/single").stdout.decode()
    assert "passes through verbatim" in out, out


def test_explain_unknown_machine_type(explain_store):
    p = explain(explain_store, "no-such-type", "org/app:latest", check=False)
    assert p.returncode != 0
    err = p.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert '"no-such-type"' in err, err


def test_explain_unknown_image(explain_store):
    p = explain(explain_store, "skylake", "org/absent:latest", check=False)
    assert p.returncode != 0
    assert "org/absent:latest" in p.stderr.decode()
