"""Upstream faults: a real docker-registry behind a proxy that misbehaves on demand (tests/e2e/conftest.py
FaultProxy). For a tag metahub never served, the client gets a registry error with the right status; for a tag it
served before, the last index it served (same bytes, same digest), with "stale" in metahub's log; nothing is cached
from an answer that does not verify. Every test is bounded: metahub runs with `--upstream-timeout 2s`."""

from __future__ import annotations

import json
import time

import pytest

from conftest import FaultProxy, assert_registry_error, get_token, push_fresh_index, start_configured_metahub, start_registry, v2
import registry_push

# fault -> (proxy options, expected status, expected codes) for a tag metahub has not served.
# The fault hits HEAD and GET of manifests unless `methods` narrows it.
FAULTS = {
    "503": ({}, 503, {"UNAVAILABLE"}),
    "slow": ({"delay": 4}, 503, {"UNAVAILABLE"}),
    "close": ({}, 503, {"UNAVAILABLE"}),
    "truncate": ({"methods": {"GET"}}, 502, {"UPSTREAM_INVALID"}),
    "tamper": ({"methods": {"GET"}}, 502, {"UPSTREAM_INVALID"}),
    "oversize": ({}, 502, {"UPSTREAM_INVALID"}),
    "oversize-chunked": ({"chunked": True}, 502, {"UPSTREAM_INVALID"}),
    "redirect_loop": ({}, 502, {"UPSTREAM_INVALID"}),
    "wrong_digest": ({}, 502, {"UPSTREAM_INVALID"}),
}
BOUND = 10  # seconds any faulty answer may take (the upstream timeout is 2 s)

def fault_params():
    return sorted(FAULTS)


# `proxy`, `hub` and `token` are conftest's: a FaultProxy in front of the upstream and a front behind it.
pytestmark = pytest.mark.usefixtures("healthy_proxy")


def set_fault(proxy: FaultProxy, name: str) -> None:
    opts, _, _ = FAULTS[name]
    opts = dict(opts)
    methods = opts.pop("methods", None)
    proxy.set(name.split("-")[0], match=r"^/v2/org/app/manifests/", methods=methods, **opts)


def pull(hub, token: str, tag: str):
    t0 = time.monotonic()
    r = v2(hub, f"org/app/manifests/{tag}", token)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("fault", fault_params())
def test_fault_on_unseen_tag_is_a_registry_error(hub, proxy, upstream, images, token, fault):
    tag = f"unseen-{fault}"
    push_fresh_index(upstream.url, images, tag)
    set_fault(proxy, fault)
    r, took = pull(hub, token, tag)
    _, status, codes = FAULTS[fault]
    assert_registry_error(r.status_code, r.content, status, codes)
    assert took < BOUND, f"{fault}: answered after {took:.1f}s"
    # the upstream was asked (the fault was met, not skipped)
    assert proxy.hits_matching(rf"/manifests/(unseen-{fault}|sha256:)")
    # healthy again: the tag is served, and what is served verifies
    proxy.clear()
    r, _ = pull(hub, token, tag)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == registry_push.sha256(r.content)
    assert json.loads(r.content)["annotations"] == {"org.opencontainers.image.description": "metahub e2e", "e2e.tag": tag}


@pytest.mark.parametrize("fault", fault_params())
def test_fault_on_served_tag_serves_the_last_index(hub, proxy, upstream, images, token, fault):
    tag = f"seen-{fault}"
    push_fresh_index(upstream.url, images, tag, note=f"{tag}-v1")
    first, _ = pull(hub, token, tag)
    assert first.status_code == 200, first.text
    stale_before = hub.log().count("stale")
    # the tag moves upstream while the upstream misbehaves: metahub cannot use the new index
    push_fresh_index(upstream.url, images, tag, note=f"{tag}-v2")
    set_fault(proxy, fault)
    r, took = pull(hub, token, tag)
    assert r.status_code == 200, f"{fault}: {r.status_code} {r.text}"
    assert r.content == first.content
    assert r.headers["Docker-Content-Digest"] == first.headers["Docker-Content-Digest"]
    assert took < BOUND
    assert hub.log().count("stale") > stale_before, "the stale answer is not marked in the log"
    # another machine type never got this tag: it gets the error, not someone else's index
    other = get_token(hub, "zen2")
    _, status, codes = FAULTS[fault]
    r, _ = pull(hub, other, tag)
    assert_registry_error(r.status_code, r.content, status, codes)
    # healthy again: the new index, verified (nothing of the faulty answers was kept)
    proxy.clear()
    r, _ = pull(hub, token, tag)
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] != first.headers["Docker-Content-Digest"]
    assert r.headers["Docker-Content-Digest"] == registry_push.sha256(r.content)
    annotations = json.loads(r.content)["annotations"]
    assert annotations["e2e.tag"] == f"{tag}-v2" and "tampered" not in annotations, annotations


def test_tampered_bytes_are_never_cached(hub, proxy, upstream, images, token):
    """An index whose bytes do not hash to their digest is refused, and nothing of it can be fetched later."""
    body, digest = push_fresh_index(upstream.url, images, "tamper-cache")
    proxy.set("tamper", match=r"^/v2/org/app/manifests/", methods={"GET"})
    # by digest: the upstream bytes verbatim path
    r = v2(hub, f"org/app/manifests/{digest}", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    r = v2(hub, "org/app/manifests/tamper-cache", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    # what the tampered bytes hash to is unknown to metahub (nor was it ever upstream)
    doc = json.loads(body)
    doc["annotations"]["tampered"] = "yes"
    tampered_digest = registry_push.sha256(json.dumps(doc).encode())
    proxy.clear()
    r = v2(hub, f"org/app/manifests/{tampered_digest}", token)
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN"})
    # the genuine bytes, by their digest, verbatim
    r = v2(hub, f"org/app/manifests/{digest}", token)
    assert r.status_code == 200 and r.content == body


def test_redirect_loop_on_blobs_is_not_followed(hub, proxy, images, token):
    """A blob redirect is handed to the client as is: metahub asks the upstream once and answers at once."""
    digest = registry_push.sha256(images.images["cpu-skylake"].config)
    proxy.set("redirect_loop", match=r"/blobs/")
    before = len(proxy.hits_matching(r"/blobs/"))
    r = v2(hub, f"org/app/blobs/{digest}", token)
    assert r.status_code == 307, r.text
    assert r.headers["Location"] == f"{proxy.url}/v2/org/app/blobs/{digest}"
    assert len(proxy.hits_matching(r"/blobs/")) - before == 1


@pytest.mark.parametrize("fault", ["503", "slow"])
def test_blob_faults(hub, proxy, images, token, fault):
    # a blob this front never looked up: a location handed out recently is reused for a while (BLOB_LOCATION_TTL)
    digest = registry_push.sha256(f"never-looked-up-{fault}".encode())
    proxy.set(fault, match=r"/blobs/", delay=4)
    r = v2(hub, f"org/app/blobs/{digest}", token)
    assert_registry_error(r.status_code, r.content, 503, {"UNAVAILABLE"})
    assert r.elapsed.total_seconds() < BOUND


def test_upstream_stopped(workdir, images):
    """The upstream process is gone: a served tag is still served (stale), an unseen one is 503 UNAVAILABLE."""
    up = start_registry(workdir, "upstream-stopped")
    hub = None
    try:
        registry_push.push_test_content(up.url)
        # the tag window off: the pull right after the upstream stops must meet it
        hub = start_configured_metahub(workdir, up, "metahub-stopped", ["--upstream-timeout", "2s", "--tag-ttl", "0"])
        token = get_token(hub, "cascadelake-a100")
        first = v2(hub, "org/app/manifests/latest", token)
        assert first.status_code == 200
        up.stop()
        r = v2(hub, "org/app/manifests/latest", token)
        assert r.status_code == 200, r.text
        assert r.content == first.content and r.headers["Docker-Content-Digest"] == first.headers["Docker-Content-Digest"]
        assert "stale" in hub.log()
        # by digest: the generated index is in the store, the upstream is not needed
        r = v2(hub, f"org/app/manifests/{first.headers['Docker-Content-Digest']}", token)
        assert r.status_code == 200 and r.content == first.content
        r = v2(hub, "org/applist/manifests/latest", get_token(hub, "cascadelake-a100", repo="org/applist"))
        assert_registry_error(r.status_code, r.content, 503, {"UNAVAILABLE"})
        assert r.elapsed.total_seconds() < BOUND
    finally:
        if hub:
            hub.stop()
        up.stop()
