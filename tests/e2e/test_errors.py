"""Errors, auth and the token endpoint, over raw HTTP. Every error must be the distribution-spec envelope
`{"errors":[{"code","message","detail"}]}` with the status of its code."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from conftest import assert_registry_error, challenge, creds, get_token, raw_request, start_registry, v2
import registry_push

NAME_INVALID = {"NAME_INVALID"}
MANIFEST_UNKNOWN = {"MANIFEST_UNKNOWN"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_parts(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s


def hs256(header: dict, payload: dict, key: bytes) -> str:
    import hashlib
    import hmac

    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


@pytest.fixture(scope="module")
def hub(metahub_file):
    return metahub_file


@pytest.fixture(scope="module")
def token(hub) -> str:
    return get_token(hub, "skylake")


# ---------------------------------------------------------------------------------------------
# names and references: refused before anything reaches the upstream


@pytest.mark.parametrize(
    "path,codes",
    [
        ("/v2/Org/App/manifests/latest", NAME_INVALID),
        ("/v2/org/../app/manifests/latest", NAME_INVALID),
        ("/v2/../org/app/manifests/latest", NAME_INVALID),
        ("/v2/org/./app/manifests/latest", NAME_INVALID),
        ("/v2/org/%2e%2e/app/manifests/latest", NAME_INVALID),
        ("/v2/org%2fapp/manifests/latest", NAME_INVALID),
        ("/v2/org%2Fapp/manifests/latest", NAME_INVALID),
        ("/v2/evil.com@x/manifests/t", NAME_INVALID),
        ("/v2/evil.com:443/x/manifests/t", NAME_INVALID),
        ("/v2/user:pw@evil.com/x/manifests/t", NAME_INVALID),
        ("/v2/org//app/manifests/latest", NAME_INVALID),
        ("/v2/org/app%00/manifests/latest", NAME_INVALID),
        # a manifest reference that cannot exist is unknown (spec, OCI conformance), not invalid
        ("/v2/org/app/manifests/.latest", MANIFEST_UNKNOWN),
        ("/v2/org/app/manifests/-latest", MANIFEST_UNKNOWN),
        ("/v2/org/app/manifests/" + "x" * 129, MANIFEST_UNKNOWN),
        ("/v2/org/app/manifests/sha256:abc", MANIFEST_UNKNOWN),
        ("/v2/org/app/manifests/sha256:" + "A" * 64, MANIFEST_UNKNOWN),
        ("/v2/org/app/manifests/md5:0123456789abcdef0123456789abcdef", MANIFEST_UNKNOWN),
        ("/v2/org/app/blobs/latest", {"DIGEST_INVALID"}),
        ("/v2/org/app/blobs/sha256:" + "0" * 63, {"DIGEST_INVALID"}),
    ],
)
@pytest.mark.parametrize("with_token", [True, False], ids=["token", "anonymous"])
def test_malformed_names_and_references(hub, token, path, codes, with_token):
    headers = {"Authorization": f"Bearer {token}"} if with_token else {}
    status, resp_headers, body = raw_request(hub.url, "GET", path, headers)
    if not with_token and status == 401:
        # refusing the anonymous caller first is as good as refusing the name
        assert_registry_error(status, body, 401, {"UNAUTHORIZED"})
        return
    assert_registry_error(status, body, 404 if codes == MANIFEST_UNKNOWN else 400, codes)


# ---------------------------------------------------------------------------------------------
# authentication


def test_ping_without_token_challenges(hub):
    r = requests.get(f"{hub.url}/v2/", timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    value = r.headers["WWW-Authenticate"]
    ch = challenge(hub)
    assert value.startswith(f'Bearer realm="{hub.url}/token",service="{ch["service"]}"'), value
    assert ch["service"]


def test_ping_with_token(hub, token):
    r = v2(hub, "", token)
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_manifest_without_token_challenges_with_scope(hub):
    r = v2(hub, "org/app/manifests/latest")
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    value = r.headers["WWW-Authenticate"]
    assert value.startswith(f'Bearer realm="{hub.url}/token"'), value
    assert 'scope="repository:org/app:pull"' in value


def check_token_answer(r: requests.Response) -> None:
    assert r.status_code == 200, r.text
    doc = r.json()
    assert {"token", "access_token", "expires_in", "issued_at"} <= set(doc), doc
    assert doc["token"] and doc["access_token"]
    assert isinstance(doc["expires_in"], int) and doc["expires_in"] > 0
    assert doc["issued_at"]


def test_token_get_with_basic_auth(hub):
    ch = challenge(hub)
    r = requests.get(ch["realm"], params={"service": ch["service"], "scope": "repository:org/app:pull"}, auth=creds("zen2"), timeout=10)
    check_token_answer(r)
    # the token works
    assert v2(hub, "org/app/manifests/latest", r.json()["token"]).status_code == 200


def test_token_post_oauth2_form(hub):
    """containerd POSTs the OAuth2 password grant to the realm."""
    ch = challenge(hub)
    login, pw = creds("zen2")
    form = {
        "grant_type": "password",
        "username": login,
        "password": pw,
        "service": ch["service"],
        "scope": "repository:org/app:pull",
        "client_id": "containerd-client",
    }
    r = requests.post(ch["realm"], data=form, timeout=10)
    check_token_answer(r)
    assert v2(hub, "org/app/manifests/latest", r.json()["access_token"]).status_code == 200


def test_token_wrong_password(hub):
    ch = challenge(hub)
    login, _ = creds("graviton")
    r = requests.get(ch["realm"], params={"service": ch["service"], "scope": "repository:org/app:pull"}, auth=(login, "wrong"), timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    r = requests.post(
        ch["realm"],
        data={"grant_type": "password", "username": login, "password": "wrong", "service": ch["service"], "scope": "repository:org/app:pull"},
        timeout=10,
    )
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert "wrong" not in r.text


def test_token_unknown_account(hub):
    ch = challenge(hub)
    r = requests.get(ch["realm"], params={"service": ch["service"]}, auth=("nobody", "nothing"), timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_token_without_credentials_is_refused(hub):
    """Anonymous access is off by default."""
    ch = challenge(hub)
    r = requests.get(ch["realm"], params={"service": ch["service"], "scope": "repository:org/app:pull"}, timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_tampered_token(hub, token):
    header, payload, sig = jwt_parts(token)
    payload["mt"] = "cascadelake-a100"
    forged = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{sig}"
    r = v2(hub, "org/app/manifests/latest", forged)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    # flipping one signature character is as bad
    h, p, s = token.split(".")
    flipped = f"{h}.{p}.{s[:-2]}{'A' if s[-2] != 'A' else 'B'}{s[-1]}"
    r = v2(hub, "org/app/manifests/latest", flipped)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_alg_none_token(hub, token):
    _, payload, _ = jwt_parts(token)
    for alg in ("none", "None", "NONE"):
        forged = f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64url(json.dumps(payload).encode())}."
        r = v2(hub, "org/app/manifests/latest", forged)
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_expired_token(hub, token):
    """An expired token is refused. Without MetaHub's key we can only forge one (so it also fails the
    signature); a genuinely expired one needs a short token TTL the CLI does not offer."""
    header, payload, _ = jwt_parts(token)
    payload["exp"] = int(time.time()) - 3600
    payload["nbf"] = payload["iat"] = int(time.time()) - 7200
    forged = hs256(header, payload, b"k" * 32)
    r = v2(hub, "org/app/manifests/latest", forged)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_garbage_tokens(hub):
    for bad in ("x", "a.b.c", "Bearer", "", "é"):
        r = requests.get(f"{hub.url}/v2/org/app/manifests/latest", headers={"Authorization": f"Bearer {bad}".encode("utf-8")}, timeout=10)
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    r = requests.get(f"{hub.url}/v2/org/app/manifests/latest", auth=creds("skylake"), timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


def test_token_for_another_repository(hub):
    other = get_token(hub, "skylake", repo="org/single")
    r = v2(hub, "org/app/manifests/latest", other)
    err = assert_registry_error(r.status_code, r.content, {401, 403}, {"UNAUTHORIZED", "DENIED"})
    assert err
    r = v2(hub, f"org/app/blobs/{registry_push.sha256(b'x')}", other)
    assert_registry_error(r.status_code, r.content, {401, 403}, {"UNAUTHORIZED", "DENIED"})


# ---------------------------------------------------------------------------------------------
# read-only, unknown routes


@pytest.mark.parametrize(
    "method,path",
    [
        ("PUT", "/v2/org/app/manifests/latest"),
        ("DELETE", "/v2/org/app/manifests/latest"),
        ("POST", "/v2/org/app/blobs/uploads/"),
        ("PATCH", "/v2/org/app/blobs/uploads/0000"),
        ("PUT", "/v2/org/app/blobs/uploads/0000?digest=sha256:" + "0" * 64),
        ("DELETE", "/v2/org/app/blobs/sha256:" + "0" * 64),
        ("POST", "/v2/org/app/manifests/latest"),
    ],
)
def test_push_verbs_unsupported(hub, token, method, path):
    status, _, body = raw_request(hub.url, method, path, {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}, b"{}")
    assert_registry_error(status, body, 405, {"UNSUPPORTED"})


@pytest.mark.parametrize("path", ["/v2/_catalog"])
def test_listing_unsupported_or_unknown(hub, token, path):
    status, _, body = raw_request(hub.url, "GET", path, {"Authorization": f"Bearer {token}"})
    assert_registry_error(status, body, {404, 405}, {"UNSUPPORTED", "NOT_FOUND", "NAME_UNKNOWN"})


@pytest.mark.parametrize("path", ["/", "/v1/", "/v2/org/app/nothing/here", "/v2/org/app/manifests", "/favicon.ico", "/tokens"])
def test_unknown_routes(hub, token, path):
    status, _, body = raw_request(hub.url, "GET", path, {"Authorization": f"Bearer {token}"})
    assert_registry_error(status, body, 404)


# ---------------------------------------------------------------------------------------------
# upstream answers


def test_unknown_tag_is_manifest_unknown(hub):
    r = v2(hub, "org/app/manifests/nope", get_token(hub, "skylake"))
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN"})


def test_unknown_digest_is_manifest_unknown(hub):
    r = v2(hub, f"org/app/manifests/sha256:{'0' * 64}", get_token(hub, "skylake"))
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN"})


def test_unknown_repository(hub):
    r = v2(hub, "org/nothere/manifests/latest", get_token(hub, "skylake", repo="org/nothere"))
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


def test_unknown_blob(hub):
    r = v2(hub, f"org/app/blobs/sha256:{'0' * 64}", get_token(hub, "skylake"))
    # a 307 to a URL that 404s would also be honest, but only if the Location works without auth
    if r.status_code == 307:
        assert requests.get(r.headers["Location"], timeout=10).status_code == 404
    else:
        assert_registry_error(r.status_code, r.content, 404, {"BLOB_UNKNOWN"})


def test_nothing_fits(hub, images):
    r = v2(hub, "org/featuredonly/manifests/latest", get_token(hub, "zen2", repo="org/featuredonly"))
    err = assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN"})
    assert "zen2" in err["message"], err
    # the feature sets on offer are named too
    assert "cpu:skylake" in json.dumps(err), err
    # while a machine type that fits gets its entry
    r = v2(hub, "org/featuredonly/manifests/latest", get_token(hub, "skylake", repo="org/featuredonly"))
    assert r.status_code == 200
    entries = json.loads(r.content)["manifests"]
    assert [images.variant_of_digest(m["digest"]) for m in entries] == ["cpu-skylake"]


def test_upstream_down_is_unavailable(workdir, metahub_factory, images):
    up = start_registry(workdir, "upstream-doomed")
    try:
        registry_push.push_test_content(up.url)
        hub = metahub_factory("file", up, shared=False)
        try:
            token = get_token(hub, "skylake")
            assert v2(hub, "org/app/manifests/latest", token).status_code == 200
            applist_token = get_token(hub, "skylake", repo="org/applist")
            up.stop()
            # A tag never served before has no last index to fall back on (test_faults covers the stale case).
            r = v2(hub, "org/applist/manifests/latest", applist_token)
            assert_registry_error(r.status_code, r.content, 503, {"UNAVAILABLE"})
            assert r.elapsed.total_seconds() < 30
        finally:
            hub.stop()
    finally:
        up.stop()
