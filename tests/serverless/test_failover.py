"""A second region (issue 28): template.yaml's origin group in front of the primary registry function and the second
region's, the second region's instances on their own table replica and SSM copies. The primary's registry function is
stopped in the middle of a rollout; every pull still completes, through the second region."""

from __future__ import annotations

import pytest
import requests

from conftest import (SECONDARY_REGISTRY_URL, creds, e2e, replicate_to_second_region, start_edge_for)

EXPECTED = {"skylake": "cpu-skylake", "zen2": "cpu-x86_64_v3"}
NODES = [("skylake", 0), ("zen2", 1), ("skylake", 2), ("zen2", 3), ("skylake", 4), ("zen2", 5)]


@pytest.fixture(scope="module")
def two_regions(workdir, moto, redirecting_upstream, serve_hub, parameters):
    assert replicate_to_second_region(moto, serve_hub.store.split(":", 1)[1]) > 0
    e = start_edge_for(workdir, moto, redirecting_upstream, serve_hub.store,
                       parameters={"SecondaryRegistryFunctionUrl": SECONDARY_REGISTRY_URL})
    yield e
    e.stop()


def test_the_distribution_has_a_failover_group(two_regions):
    behaviour = two_regions.distribution.behaviour_for("/v2/org/app/manifests/latest")
    assert behaviour.failover is not None
    assert two_regions.distribution.targets[behaviour.failover.secondary].region == "secondary"
    assert behaviour.allowed_methods == {"GET", "HEAD", "OPTIONS"}
    assert two_regions.distribution.behaviour_for("/token").failover is None, "/token keeps POST: no origin group"
    r = requests.get(f"{two_regions.url}/v2/", timeout=30, verify=two_regions.ca_file)
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    push = requests.put(f"{two_regions.url}/v2/org/app/manifests/latest", data=b"{}", timeout=30, verify=two_regions.ca_file)
    assert push.status_code == 403, "CloudFront refuses methods the behaviour does not allow"


def test_primary_stops_mid_rollout_and_no_pull_fails(two_regions, tmp_path):
    edge = two_regions
    primary = edge.pool("metahub-registry")
    secondary = edge.pool("metahub-registry", "secondary")
    before = len(edge.log)
    stop_after = 12  # registry requests: the primary goes away in the middle of the second node's pull
    served = {"n": 0}

    def stop_primary_mid_rollout(edge_, origin):
        if origin == "registry":
            served["n"] += 1
            if served["n"] == stop_after:
                primary.stop_function()

    edge.on_request.append(stop_primary_mid_rollout)
    try:
        results = []
        for machine_type, i in NODES:
            label, text, _ = e2e.skopeo_copy_variant(f"{edge.host}/org/app:latest", tmp_path / f"node-{i}", creds(machine_type))
            results.append((machine_type, label, text))
    finally:
        edge.on_request.remove(stop_primary_mid_rollout)
    for machine_type, label, text in results:
        assert label == text == EXPECTED[machine_type], results
    log = edge.log[before:]
    assert primary.stopped and served["n"] >= stop_after
    assert any(origin == "registry" for *_, origin, _ in log), "the rollout began on the primary"
    assert any(origin == "registry-secondary" for *_, origin, _ in log), "and went on through the second region"
    assert edge.failed_over, "requests the stopped primary failed were sent to the second region"
    assert not [entry for entry in log if entry[2] >= 500], "no client saw a 5xx"
    assert secondary.invocations > 0
    by_origin = {o: sum(1 for *_, origin, _ in log if origin == o) for o in ("registry", "registry-secondary", "token")}
    print(f"\nfailover: {len(NODES)} pulls, requests served {by_origin}, {len(edge.failed_over)} failed over "
          f"(primary statuses {sorted({s for *_, s in edge.failed_over})})")
