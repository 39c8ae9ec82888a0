"""Real clients pull through the serverless path: the edge stand-in of template.yaml's distribution, Function URL
events, the real registry and token binaries, DynamoDB on moto, a docker-registry upstream whose blobs 307 to its
storage. What the e2e suite checks against `metahub serve`, here through everything Lambda and CloudFront put in
between (header conversion, the Host the functions see, the origin secret, cold instances, scaled-out instances)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json

import pytest
import requests

import registry_push
from conftest import CLIENTS, creds, e2e, start_edge_for
import edge as edge_mod
from lambda_harness import SERVICE, event

# What each machine type gets for org/app on linux/amd64 (tests/e2e/test_pull.py's EXPECTED_AMD64).
EXPECTED = {"skylake": "cpu-skylake", "zen2": "cpu-x86_64_v3"}
CHILD = "cpu-x86_64_v3"  # an upstream child digest both types run: served verbatim


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def challenge(edge) -> dict[str, str]:
    r = requests.get(f"{edge.url}/v2/", timeout=30, verify=edge.ca_file)
    assert r.status_code == 401, r.text
    return e2e.parse_challenge(r.headers["WWW-Authenticate"])


def token_for(edge, machine_type: str, repo: str = "org/app") -> str:
    ch = challenge(edge)
    r = requests.get(ch["realm"], params={"service": ch["service"], "scope": f"repository:{repo}:pull"}, auth=creds(machine_type), timeout=30, verify=edge.ca_file)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def v2(edge, method: str, path: str, token: str | None = None) -> requests.Response:
    headers = {"Accept": registry_push.ALL_MANIFEST_TYPES}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{edge.url}/v2/{path}", headers=headers, allow_redirects=False, timeout=30,
                            verify=edge.ca_file)


def filtered_digest(edge, machine_type: str) -> str:
    r = v2(edge, "HEAD", "org/app/manifests/latest", token_for(edge, machine_type))
    assert r.status_code == 200, r.headers
    return r.headers["Docker-Content-Digest"]


def layer_storage_hits(upstream, images, variant: str) -> int:
    hexd = hashlib.sha256(images.images[variant].layer).hexdigest()
    return sum(1 for h in upstream.storage.hits if hexd in h)


# --------------------------------------------------------------------------------------------- the client matrix


@pytest.mark.parametrize("how", ["tag", "filtered-digest", "child-digest"])
@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_pulls_through_the_edge(request, client, machine_type, how, edge, images, redirecting_upstream, tmp_path):
    if how == "tag":
        ref, expected = f"{edge.host}/org/app:latest", EXPECTED[machine_type]
    elif how == "filtered-digest":
        ref, expected = f"{edge.host}/org/app@{filtered_digest(edge, machine_type)}", EXPECTED[machine_type]
    else:
        ref, expected = f"{edge.host}/org/app@{images.images[CHILD].digest}", CHILD
    before = layer_storage_hits(redirecting_upstream, images, expected)
    assert CLIENTS[client](request, ref, creds(machine_type), tmp_path) == expected
    # The layer came from the upstream's storage, where the function's 307 sent the client. containerd keeps blobs
    # across its namespaces, so it fetches a layer only the first time it pulls that variant in this session.
    if (client, expected) not in _FETCHED:
        assert layer_storage_hits(redirecting_upstream, images, expected) > before
        _FETCHED.add((client, expected))


_FETCHED: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------------------------- pins (issue 25)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_pin_is_a_build_the_puller_runs_or_a_refusal(request, client, cold_edge, images, tmp_path):
    """Through the edge, every request on a cold instance (so judged from the store, not one instance's memory):
    skylake's resolved digest is refused to zen2 (no skylake build runs there) and served to cascadelake-a100 (a
    cascadelake runs it); the skylake child likewise."""
    skylake = filtered_digest(cold_edge, "skylake")
    refs = (f"{cold_edge.host}/org/app@{skylake}", f"{cold_edge.host}/org/app@{images.images['cpu-skylake'].digest}")
    for i, ref in enumerate(refs):
        (tmp_path / f"ok{i}").mkdir()
        (tmp_path / f"refused{i}").mkdir()
        assert CLIENTS[client](request, ref, creds("cascadelake-a100"), tmp_path / f"ok{i}") == "cpu-skylake"
        if client == "docker":
            request.getfixturevalue("docker").remove_images()  # the refused pull must ask the registry again
        with pytest.raises(AssertionError) as refused:
            CLIENTS[client](request, ref, creds("zen2"), tmp_path / f"refused{i}")
        assert any(w in str(refused.value).lower() for w in ("denied", "403", "forbidden")), refused.value
    for method in ("GET", "HEAD"):
        r = v2(cold_edge, method, f"org/app/manifests/{skylake}", token_for(cold_edge, "zen2"))
        assert r.status_code == 403, r.text
    err = v2(cold_edge, "GET", f"org/app/manifests/{skylake}", token_for(cold_edge, "zen2")).json()["errors"][0]
    assert err["code"] == "DENIED" and err["detail"]["pullInstead"] == [f"org/app@{images.images['cpu-x86_64_v3'].digest}"], err


# --------------------------------------------------------------------------------------------- headers through the conversion


def test_challenge_names_the_edge_as_realm(edge):
    for method in ("GET", "HEAD"):  # containerd's first request is a HEAD of the manifest, without a token
        r = requests.request(method, f"{edge.url}/v2/org/app/manifests/latest", timeout=30, verify=edge.ca_file)
        assert r.status_code == 401, r.text
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        ch = e2e.parse_challenge(r.headers["WWW-Authenticate"])
        assert ch["scheme"] == "Bearer"
        assert ch["realm"] == f"{edge.url}/token", "the realm is the edge's address, not the Function URL's Host"
        assert ch["service"] == SERVICE
        assert ch["scope"] == "repository:org/app:pull"


def test_token_by_get_and_by_containerd_form(edge):
    ch = challenge(edge)
    get = requests.get(ch["realm"], params={"service": SERVICE, "scope": "repository:org/app:pull"}, auth=creds("skylake"), timeout=30,
                       verify=edge.ca_file)
    assert get.status_code == 200, get.text
    form = {"grant_type": "password", "username": creds("skylake")[0], "password": creds("skylake")[1], "service": SERVICE,
            "scope": "repository:org/app:pull", "client_id": "containerd"}
    post = requests.post(ch["realm"], data=form, timeout=30, verify=edge.ca_file)
    assert post.status_code == 200, post.text
    for r in (get, post):
        assert v2(edge, "GET", "", r.json()["token"]).status_code == 200
    bad = requests.get(ch["realm"], params={"service": SERVICE}, auth=(creds("skylake")[0], "wrong"), timeout=30,
                       verify=edge.ca_file)
    assert bad.status_code == 401
    assert bad.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_manifest_headers_get_and_head(edge, images):
    token = token_for(edge, "skylake")
    get = v2(edge, "GET", "org/app/manifests/latest", token)
    assert get.status_code == 200, get.text
    digest = get.headers["Docker-Content-Digest"]
    assert digest == sha256(get.content), "the body must be the exact bytes of the digest"
    assert get.headers["Content-Type"] == registry_push.OCI_INDEX
    assert int(get.headers["Content-Length"]) == len(get.content)
    head = v2(edge, "HEAD", "org/app/manifests/latest", token)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Content-Type"] == registry_push.OCI_INDEX
    assert int(head.headers["Content-Length"]) == len(get.content), "HEAD announces the length GET sends"
    by_digest = v2(edge, "GET", f"org/app/manifests/{digest}", token)
    assert by_digest.status_code == 200 and by_digest.content == get.content
    child = images.images[CHILD]
    verbatim = v2(edge, "GET", f"org/app/manifests/{child.digest}", token)
    assert verbatim.content == child.manifest and verbatim.headers["Docker-Content-Digest"] == child.digest


def test_blob_307_to_upstream_storage(edge, images, redirecting_upstream):
    token = token_for(edge, "skylake")
    layer = images.images["cpu-skylake"].layer
    for method in ("GET", "HEAD"):
        r = v2(edge, method, f"org/app/blobs/{sha256(layer)}", token)
        assert r.status_code == 307, r.text
        assert r.headers["Location"].startswith(redirecting_upstream.storage.url + "/"), r.headers
        assert r.headers["Docker-Content-Digest"] == sha256(layer)
    assert requests.get(r.headers["Location"], timeout=30).content == layer


def test_errors_keep_their_status_and_json(edge):
    token = token_for(edge, "skylake")
    missing = v2(edge, "GET", "org/app/manifests/no-such-tag", token)
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    push = requests.put(f"{edge.url}/v2/org/app/manifests/latest", data=b"{}", timeout=30, verify=edge.ca_file,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": registry_push.OCI_INDEX})
    assert push.status_code == 405
    assert push.json()["errors"][0]["code"] == "UNSUPPORTED"
    scope = v2(edge, "GET", "org/single/manifests/latest", token)
    assert scope.status_code == 401 and 'error="insufficient_scope"' in scope.headers["WWW-Authenticate"]


def test_same_filtered_index_as_metahub_serve(edge, serve_hub):
    through_edge = v2(edge, "GET", "org/app/manifests/latest", token_for(edge, "zen2"))
    serve_token = e2e.get_token(serve_hub, "zen2")
    direct = e2e.v2(serve_hub, "org/app/manifests/latest", serve_token)
    assert through_edge.status_code == direct.status_code == 200
    assert through_edge.content == direct.content


# --------------------------------------------------------------------------------------------- the origin secret


def test_origin_secret_on_every_hop(edge):
    """Each function refuses an event without the edge's header (a request around CloudFront); a viewer cannot
    supply the header itself: the edge overwrites it."""
    secret_header = next(iter(edge.distribution.origin_headers["registry"]))
    for binary, path in (("metahub-registry", "/v2/"), ("metahub-token", "/token")):
        outcome, _ = edge.pool(binary).invoke(event("GET", path, origin=False))
        r = edge_mod.function_url_response("GET", outcome)
        assert r.status == 403, r.body
        assert json.loads(r.body)["errors"][0]["code"] == "DENIED"
    r = requests.get(f"{edge.url}/v2/", headers={secret_header: "forged"}, timeout=30, verify=edge.ca_file)
    assert r.status_code == 401, "the edge's value replaced the viewer's"


def test_stale_origin_secret_is_refused_on_every_hop(workdir, moto, redirecting_upstream, serve_hub, parameters, tmp_path):
    """An edge whose origin secret is not the functions' (a rotation half done): every client request is refused
    with the registry's DENIED, the token endpoint included, and skopeo's pull fails on it."""
    stale = start_edge_for(workdir, moto, redirecting_upstream, serve_hub.store, resolve_ssm=lambda name: "stale-secret")
    try:
        for path in ("/v2/", "/token?service=" + SERVICE):
            r = requests.get(stale.url + path, auth=creds("skylake"), timeout=30, verify=stale.ca_file)
            assert r.status_code == 403, r.text
            assert r.json()["errors"][0]["code"] == "DENIED"
        p = e2e.skopeo("inspect", "--raw", "--tls-verify=false", "--creds", ":".join(creds("skylake")),
                       f"docker://{stale.host}/org/app:latest", check=False)
        assert p.returncode != 0
        # skopeo reports its last attempt (a plain-HTTP fallback the HTTPS-only edge cannot answer), so the refusal
        # is read from the edge: its HTTPS /v2/ answered 403
        assert any(m == "GET" and t.startswith("/v2/") and status == 403 for m, t, status, *_ in stale.log), stale.log
    finally:
        stale.stop()


# --------------------------------------------------------------------------------------------- Lambda's scaling


def test_concurrent_pulls_scale_out(edge, images, tmp_path):
    """Pulls at the same moment are served by several instances, as Lambda scales out, and each gets its build."""
    edge.stop_idle()
    registry = edge.pool("metahub-registry")
    started = registry.instances()
    jobs = [(mt, i) for mt in sorted(EXPECTED) for i in range(2)]

    def pull(job):
        mt, i = job
        label, text, _ = e2e.skopeo_copy_variant(f"{edge.host}/org/app:latest", tmp_path / f"{mt}-{i}", creds(mt))
        return mt, label, text

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(pull, jobs))
    for mt, label, text in results:
        assert label == text == EXPECTED[mt]
    assert registry.instances() - started > 1, "concurrent requests started more than one instance"
    assert registry.max_concurrent > 1


def test_every_request_on_a_cold_instance(cold_edge, request, images):
    """containerd HEADs the tag on one instance and GETs the filtered index by digest on another: the digest is
    servable from the shared store, not from one instance's memory. Every request is a cold start."""
    first = len(cold_edge.log)
    assert CLIENTS["ctr"](request, f"{cold_edge.host}/org/app:latest", creds("zen2"), None) == EXPECTED["zen2"]
    served = cold_edge.log[first:]
    assert served and all(cold for *_, cold in served), served
    methods = {(m, origin) for m, _, _, origin, _ in served}
    assert ("HEAD", "registry") in methods and ("POST", "token") in methods, served
