"""The three Lambda binaries answer Function URL events (payload 2.0, as CloudFront forwards them) per the contract
of /work/shared/DESIGN.md: status, headers and body of what each posts back to the Runtime API."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import urllib.parse

import registry_push
from lambda_harness import (
    ADMIN_ARN,
    LOGIN,
    MACHINE_TYPE,
    PASSWORD,
    PUBLIC_URL,
    SERVICE,
    basic,
    full_env,
    start_function,
)

CHALLENGE = f'Bearer realm="{PUBLIC_URL}/token",service="{SERVICE}"'


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "accept": registry_push.ALL_MANIFEST_TYPES}


def assert_v2_headers(r) -> None:
    assert r.headers.get("docker-distribution-api-version") == "registry/2.0", r.headers
    assert not r.payload.get("cookies"), "MetaHub sets no cookies"


# --------------------------------------------------------------------------------------------- /v2/


def test_ping_without_token_is_challenged_with_the_public_realm(registry_fn):
    # the start-up event was this request: the very first answer of a cold function
    for r in (registry_fn.first, registry_fn.request("GET", "/v2/")):
        assert r.status == 401, r.body
        assert r.headers["www-authenticate"] == CHALLENGE
        assert r.error_codes() == ["UNAUTHORIZED"]
        assert_v2_headers(r)


def test_ping_with_token(registry_fn, token):
    r = registry_fn.request("GET", "/v2/", headers=bearer(token))
    assert r.status == 200, r.body
    assert r.json() == {}
    assert_v2_headers(r)


def test_request_around_cloudfront_is_denied(registry_fn, token_fn, token):
    r = registry_fn.request("GET", "/v2/org/app/manifests/latest", headers=bearer(token), origin=False)
    assert r.status == 403, r.body
    assert r.error_codes() == ["DENIED"]
    r = registry_fn.request("GET", "/v2/", headers={"x-origin-verify": "wrong"}, origin=False)
    assert r.status == 403
    r = token_fn.request("GET", "/token", query=f"service={SERVICE}", headers={"authorization": basic(LOGIN, PASSWORD)}, origin=False)
    assert r.status == 403
    assert r.error_codes() == ["DENIED"]


def test_bad_token_is_refused(registry_fn, token):
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for t in (forged, "not-a-jwt"):
        r = registry_fn.request("GET", "/v2/org/app/manifests/latest", headers=bearer(t))
        assert r.status == 401, r.body
        assert r.error_codes() == ["UNAUTHORIZED"]
        assert r.headers["www-authenticate"].startswith(CHALLENGE)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


# --------------------------------------------------------------------------------------------- /token


def check_token_body(r) -> str:
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    issued = datetime.datetime.fromisoformat(body["issued_at"].replace("Z", "+00:00"))
    assert abs(issued.timestamp() - time.time()) < 120, body["issued_at"]
    return body["token"]


def test_token_get_with_basic_auth(token_fn):
    query = urllib.parse.urlencode({"service": SERVICE, "scope": "repository:org/app:pull"})
    check_token_body(token_fn.request("GET", "/token", query=query, headers={"authorization": basic(LOGIN, PASSWORD)}))


def test_token_post_oauth2_form_plain_and_base64(token_fn, registry_fn):
    form = urllib.parse.urlencode(
        {"grant_type": "password", "username": LOGIN, "password": PASSWORD, "service": SERVICE, "scope": "repository:org/app:pull", "client_id": "containerd"}
    ).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    for b64 in (False, True):
        t = check_token_body(token_fn.request("POST", "/token", headers=headers, body=form, b64=b64))
        # a token from the token function is good at the registry function (one key, from SSM)
        assert registry_fn.request("GET", "/v2/", headers=bearer(t)).status == 200


def test_token_bad_credentials(token_fn):
    r = token_fn.request("GET", "/token", query=f"service={SERVICE}", headers={"authorization": basic(LOGIN, "wrong")})
    assert r.status == 401, r.body
    assert r.error_codes() == ["UNAUTHORIZED"]


def test_token_function_serves_only_token(token_fn):
    r = token_fn.request("GET", "/v2/")
    assert r.status == 404
    assert r.error_codes() == ["NOT_FOUND"]


def test_token_first_answer(token_fn):
    # the start-up event: GET /token without credentials, anonymous access off
    assert token_fn.first is not None and token_fn.first.status == 401


# --------------------------------------------------------------------------------------------- manifests, blobs


def expected_skylake_entries(images: registry_push.Pushed) -> list[str]:
    # best fit of the amd64 group for cpu:skylake, the untouched arm64 group, the skylake attestation
    return [images.images["cpu-skylake"].digest, images.images["arm64"].digest, images.attestation.digest]


def test_manifest_by_tag_get_and_head(registry_fn, token, images):
    r = registry_fn.request("GET", "/v2/org/app/manifests/latest", headers=bearer(token))
    assert r.status == 200, r.body
    assert_v2_headers(r)
    assert r.headers["content-type"] == registry_push.OCI_INDEX
    digest = r.headers["docker-content-digest"]
    assert digest == sha256(r.body), "the body must be the exact bytes of the digest"
    index = r.json()
    assert [m["digest"] for m in index["manifests"]] == expected_skylake_entries(images)
    assert index["annotations"] == {"org.opencontainers.image.description": "metahub e2e"}

    h = registry_fn.request("HEAD", "/v2/org/app/manifests/latest", headers=bearer(token))
    assert h.status == 200
    assert h.body == b"", "HEAD answers carry no body"
    assert h.headers["docker-content-digest"] == digest
    assert h.headers["content-type"] == registry_push.OCI_INDEX
    if "content-length" in h.headers:
        assert int(h.headers["content-length"]) == len(r.body)


def test_manifest_by_digest(registry_fn, token, images):
    r = registry_fn.request("GET", "/v2/org/app/manifests/latest", headers=bearer(token))
    digest = r.headers["docker-content-digest"]
    # containerd's path: HEAD the tag, then GET by the digest it was given
    d = registry_fn.request("GET", f"/v2/org/app/manifests/{digest}", headers=bearer(token))
    assert d.status == 200, d.body
    assert d.body == r.body
    assert d.headers["docker-content-digest"] == digest
    h = registry_fn.request("HEAD", f"/v2/org/app/manifests/{digest}", headers=bearer(token))
    assert h.status == 200 and h.body == b""
    # an upstream digest: the upstream bytes, verbatim
    child = images.images["cpu-skylake"]
    c = registry_fn.request("GET", f"/v2/org/app/manifests/{child.digest}", headers=bearer(token))
    assert c.status == 200, c.body
    assert c.body == child.manifest
    assert c.headers["docker-content-digest"] == child.digest


def test_manifest_of_other_repository_is_out_of_scope(registry_fn, token):
    r = registry_fn.request("GET", "/v2/org/single/manifests/latest", headers=bearer(token))
    assert r.status == 401, r.body
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


def test_blob_redirects(registry_fn, token, images, upstream):
    layer = sha256(images.images["cpu-skylake"].layer)
    for method in ("GET", "HEAD"):
        r = registry_fn.request(method, f"/v2/org/app/blobs/{layer}", headers=bearer(token))
        assert r.status == 307, r.body
        assert r.headers["location"].startswith(upstream.url), r.headers
        assert layer in r.headers["location"]
        if method == "HEAD":
            assert r.body == b""


def test_push_is_unsupported(registry_fn, token):
    r = registry_fn.request(
        "PUT", "/v2/org/app/manifests/latest", headers={**bearer(token), "content-type": registry_push.OCI_INDEX}, body=b"{}"
    )
    assert r.status == 405, r.body
    assert r.error_codes() == ["UNSUPPORTED"]


# --------------------------------------------------------------------------------------------- admin


def test_admin_api_with_iam_caller(admin_fn):
    first = admin_fn.first
    assert first.status == 200, first.body
    assert MACHINE_TYPE[0] in [m["name"] for m in first.json()]
    put = admin_fn.request("PUT", "/admin/machine-types/lambda-zen3", origin=False, iam_caller=ADMIN_ARN,
                           headers={"content-type": "application/json"}, body=b'{"features":["cpu:zen3"]}')
    assert put.status in (200, 201), put.body
    changes = admin_fn.request("GET", "/admin/changes", origin=False, iam_caller=ADMIN_ARN)
    assert changes.status == 200, changes.body
    assert any(c["who"] == ADMIN_ARN and "lambda-zen3" in c["target"] for c in changes.json()), changes.body
    bad = admin_fn.request("PUT", "/admin/machine-types/x", origin=False, iam_caller=ADMIN_ARN, body=b'{"features":["cpu:skylak"]}')
    assert bad.status == 400 and "skylake" in bad.body.decode()
    h = admin_fn.request("HEAD", "/admin/machine-types", origin=False, iam_caller=ADMIN_ARN)
    assert h.status == 200 and h.body == b""


def test_admin_page_routes_watched_images_and_matrix(admin_fn, images):
    """The admin page's data routes on the admin function: they query the WATCHED partition of the table, which the
    admin role must allow (the IAM check fails this test otherwise: on AWS both routes would answer 503)."""
    def call(method, path, body=None, query=""):
        return admin_fn.request(method, path, origin=False, iam_caller=ADMIN_ARN, query=query,
                                headers={"content-type": "application/json"} if body else None, body=body)

    added = call("POST", "/admin/watched-images", b'{"image":"org/app"}')
    assert added.status in (200, 201), added.body
    listed = call("GET", "/admin/watched-images")
    assert listed.status == 200, listed.body
    assert "org/app:latest" in listed.json()
    matrix = call("GET", "/admin/matrix")
    assert matrix.status == 200, matrix.body
    row = next(r for r in matrix.json()["images"] if r["image"] == "org/app:latest")
    skylake = [m["name"] for m in matrix.json()["machineTypes"]].index(MACHINE_TYPE[0])
    assert images.images["cpu-skylake"].digest in row["cells"][skylake]["served"], row
    gone = call("DELETE", "/admin/watched-images", query="image=org/app")
    assert gone.status == 204, gone.body


def test_admin_refuses_requests_without_iam_caller(admin_fn, token):
    for headers in ({}, bearer(token)):
        r = admin_fn.request("GET", "/admin/machine-types", origin=False, headers=headers)
        assert r.status == 401, r.body
        assert r.error_codes() == ["UNAUTHORIZED"]


# --------------------------------------------------------------------------------------------- bad configuration


def _init_error(workdir, binary: str, env: dict[str, str], name: str) -> str:
    fn = start_function(workdir, binary, env, None, name=name)
    try:
        fn.proc.popen.wait(timeout=30)
    finally:
        fn.stop()
    assert fn.proc.popen.returncode == 1, fn.proc.tail()
    assert len(fn.runtime.init_errors) == 1, fn.proc.tail()
    headers, body = fn.runtime.init_errors[0]
    assert headers.get("lambda-runtime-function-error-type")
    message = json.loads(body)["errorMessage"]
    assert "\n" not in message
    assert message in fn.proc.log_path.read_text(), "the same line is in the function's log"
    return message


def test_missing_public_url_is_one_clear_init_error(workdir, moto, upstream, seeded):
    # Without a public URL the realm can only come from CloudFront's X-Forwarded-Host, which needs an origin secret.
    env = full_env(moto, upstream)
    del env["METAHUB_PUBLIC_URL"]
    del env["METAHUB_ORIGIN_SECRET_PARAM"]
    message = _init_error(workdir, "metahub-registry", env, "registry-no-public-url")
    assert "METAHUB_PUBLIC_URL" in message and "METAHUB_ORIGIN_SECRET_PARAM" in message


def test_missing_ssm_parameter_is_one_clear_init_error(workdir, moto, upstream, seeded):
    env = {**full_env(moto, upstream), "METAHUB_ORIGIN_SECRET_PARAM": "/metahub/test/nope"}
    message = _init_error(workdir, "metahub-token", env, "token-missing-param")
    assert "/metahub/test/nope" in message and "METAHUB_ORIGIN_SECRET_PARAM" in message


def test_signing_key_from_the_store_when_no_parameter(workdir, moto, upstream, seeded):
    """Without METAHUB_SIGNING_KEY_PARAM both functions share the key kept in the table."""
    env = {k: v for k, v in full_env(moto, upstream).items() if k != "METAHUB_SIGNING_KEY_PARAM"}
    tok = start_function(workdir, "metahub-token", env, None, name="token-store-key")
    reg = start_function(workdir, "metahub-registry", env, None, name="registry-store-key")
    try:
        r = tok.request("GET", "/token", query=f"service={SERVICE}&scope=repository:org/app:pull", headers={"authorization": basic(LOGIN, PASSWORD)})
        t = check_token_body(r)
        assert reg.request("GET", "/v2/", headers=bearer(t)).status == 200
    finally:
        tok.stop()
        reg.stop()

