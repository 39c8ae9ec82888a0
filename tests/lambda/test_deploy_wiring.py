"""What a first real deploy relies on, with the real binaries against the Runtime API stand-in and moto (SSM,
DynamoDB): origin secret rotation without an outage (infra/rotate-origin-secret.sh), the realm from CloudFront's
X-Forwarded-Host (one-pass deploy, as template.yaml configures the functions: no METAHUB_PUBLIC_URL), JSON logs
that carry the invocation's request id, and no cacheable answer."""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import pytest

from lambda_harness import ORIGIN_SECRET_PARAM, ROOT, SERVICE, clean_env, event, full_env, start_function

ROTATED_PARAM = "/metahub/test/origin-rotated"


def ssm(moto):
    return boto3.client("ssm", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


def deployed_env(moto, upstream, **extra) -> dict[str, str]:
    """The registry function's environment as template.yaml sets it: no METAHUB_PUBLIC_URL, the function timeout."""
    env = {**full_env(moto, upstream), "METAHUB_FUNCTION_TIMEOUT": "10", **extra}
    del env["METAHUB_PUBLIC_URL"]
    return env


def ping(fn, origin_secret: str | None, **headers):
    h = dict(headers)
    if origin_secret is not None:
        h["x-origin-verify"] = origin_secret
    return fn.invoke(event("GET", "/v2/", headers=h, origin=False))


def rotate(moto) -> int:
    """infra/rotate-origin-secret.sh, SSM step (the stack update needs real CloudFormation)."""
    env = clean_env({**moto.env, "PATH": os.environ["PATH"]})
    p = subprocess.run(["bash", str(ROOT / "infra" / "rotate-origin-secret.sh"), "--region", "us-east-1", "--param",
                        ROTATED_PARAM, "--no-stack-update"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return ssm(moto).get_parameter(Name=ROTATED_PARAM)["Parameter"]["Version"]


def value(moto, version: int) -> str:
    return ssm(moto).get_parameter(Name=f"{ROTATED_PARAM}:{version}")["Parameter"]["Value"]


def test_rotation_never_refuses_cloudfront(workdir, moto, upstream, seeded):
    ssm(moto).put_parameter(Name=ROTATED_PARAM, Type="String", Value="first-origin-secret-value-0123456789", Overwrite=True)
    v1 = ssm(moto).get_parameter(Name=ROTATED_PARAM)["Parameter"]["Version"]
    env = deployed_env(moto, upstream, METAHUB_ORIGIN_SECRET_PARAM=ROTATED_PARAM, METAHUB_ORIGIN_SECRET_VERSION=str(v1))
    before = start_function(workdir, "metahub-registry", env, None, name="registry-before-rotation")
    assert ping(before, value(moto, v1)).status == 401  # reaches the registry: asks for a token

    v2 = rotate(moto)
    assert v2 == v1 + 1 and value(moto, v2) != value(moto, v1)
    # Until the stack update, CloudFront still sends v1 and the running functions (pinned to v1) accept it.
    assert ping(before, value(moto, v1)).status == 401
    # The stack update pins v2: new instances accept v2 and, while edges propagate, v1.
    after = start_function(workdir, "metahub-registry", {**env, "METAHUB_ORIGIN_SECRET_VERSION": str(v2)}, None,
                           name="registry-after-rotation")
    for version in (v2, v1):
        r = ping(after, value(moto, version))
        assert r.status == 401, (version, r.body)
    # Anything else, an older value included, is refused.
    v3 = rotate(moto)
    for refused in (None, "not-the-secret", value(moto, v3)):
        r = ping(after, refused)
        assert r.status == 403 and r.error_codes() == ["DENIED"], (refused, r.body)
    # Unpinned (the template's default before deploy.sh pins): latest and previous.
    latest = start_function(workdir, "metahub-registry", {k: v for k, v in env.items() if k != "METAHUB_ORIGIN_SECRET_VERSION"},
                            None, name="registry-latest")
    assert [ping(latest, value(moto, v)).status for v in (v3, v2, v1)] == [401, 401, 403]
    for fn in (before, after, latest):
        fn.stop()


def test_one_pass_deploy_realm_follows_the_viewer_host(workdir, moto, upstream, seeded):
    from lambda_harness import ORIGIN_SECRET

    fn = start_function(workdir, "metahub-registry", deployed_env(moto, upstream), None, name="registry-one-pass")
    for host in ("d111111abcdef8.cloudfront.net", "registry.example.com"):
        r = ping(fn, ORIGIN_SECRET, **{"x-forwarded-host": host})
        assert r.status == 401
        assert r.headers["www-authenticate"] == f'Bearer realm="https://{host}/token",service="{SERVICE}"'
        assert r.headers["cache-control"] == "no-store"
    # Without the origin secret the header is never looked at: the request is refused.
    r = ping(fn, None, **{"x-forwarded-host": "evil.example"})
    assert r.status == 403 and "www-authenticate" not in r.headers
    fn.stop()


def test_json_logs_carry_the_request_id(workdir, moto, upstream, seeded):
    from lambda_harness import ORIGIN_SECRET

    env = deployed_env(moto, upstream, AWS_LAMBDA_LOG_FORMAT="JSON", RUST_LOG="debug")
    fn = start_function(workdir, "metahub-registry", env, None, name="registry-json-logs")
    ev = event("GET", "/v2/org/app/manifests/latest", headers={"x-origin-verify": ORIGIN_SECRET}, origin=False)
    request_id = fn.runtime.submit(ev)
    fn.runtime.wait(request_id, timeout=60)
    fn.stop()
    lines = [line for line in fn.proc.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records
    in_request = [r for r in records if request_id in json.dumps(r)]
    assert in_request, "some line logged while serving the request names its request id"
    # every log line has its time and level; EMF metric lines (`_aws`) are CloudWatch's own shape
    assert all({"timestamp", "level"} <= set(r) for r in records if "_aws" not in r)


@pytest.mark.parametrize("path", ["/v2/", "/v2/org/app/manifests/nope", "/v2/org/app/blobs/sha256:" + "0" * 64])
def test_no_answer_is_cacheable(registry_fn, token, path):
    for headers in ({}, {"authorization": f"Bearer {token}"}):
        r = registry_fn.request("GET", path, headers=headers)
        assert "no-store" in r.headers.get("cache-control", ""), (path, r.status, r.headers)


# --------------------------------------------------------------------------------------------- signing key rotation

ROTATING_KEY_PARAM = "/metahub/test/rotating-signing-key"


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def kid_of(token: str) -> str | None:
    return json.loads(_unb64url(token.split(".")[0])).get("kid")


def resigned(token: str, key: bytes, kid: str, lifetime: int = 3600) -> str:
    """`token`'s claims (its account fingerprint included), re-signed with `key` as version `kid`, living longer."""
    import hashlib
    import hmac
    import time as _time

    claims = json.loads(_unb64url(token.split(".")[1]))
    claims["exp"] = int(_time.time()) + lifetime
    signing_input = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + _b64url(json.dumps(claims).encode())
    return signing_input + "." + _b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def key_id(key: bytes) -> str:
    """The `kid` of tokens signed with `key` (metahub_core::token::key_id)."""
    import hashlib

    return hashlib.sha256(key).hexdigest()[:16]


def put_key(moto) -> tuple[bytes, int]:
    import base64

    key = os.urandom(32)
    ssm(moto).put_parameter(Name=ROTATING_KEY_PARAM, Type="SecureString", Value=base64.b64encode(key).decode(), Overwrite=True)
    return key, ssm(moto).get_parameter(Name=ROTATING_KEY_PARAM)["Parameter"]["Version"]


def login(token_fn) -> str:
    from lambda_harness import LOGIN, PASSWORD, basic

    r = token_fn.request("GET", "/token", query=f"service={SERVICE}&scope=repository:org/app:pull",
                         headers={"authorization": basic(LOGIN, PASSWORD)})
    assert r.status == 200, r.body
    return r.json()["token"]


def pull_status(registry_fn, token: str) -> int:
    return registry_fn.request("GET", "/v2/", headers={"authorization": f"Bearer {token}"}).status


def poll(check, what: str, seconds: float = 60):
    import time as _time

    deadline = _time.monotonic() + seconds
    while _time.monotonic() < deadline:
        value = check()
        if value:
            return value
        _time.sleep(0.25)
    raise AssertionError(f"not within {seconds}s: {what}")


def test_signing_key_rotation_refuses_no_token_between_instances(workdir, moto, upstream, seeded):
    """Issue 28, finding 2. A rotation is a new SSM version of the signing key; a redeploy with nothing else changed
    starts no new instance, so instances that read the old key and instances that read the new one serve side by
    side. Tokens of either are good at the other, and the old key is dropped one token lifetime later."""
    functions = []

    def start(binary, name, refresh, **extra):
        env = {**full_env(moto, upstream), "METAHUB_SIGNING_KEY_PARAM": ROTATING_KEY_PARAM,
               "METAHUB_SIGNING_KEY_REFRESH": refresh, **extra}
        fn = start_function(workdir, binary, env, None, name=name)
        functions.append(fn)
        return fn

    try:
        k1, v1 = put_key(moto)
        # Warm instances that read version 1 and do not re-read during this phase (refresh 1 h).
        old_token = start("metahub-token", "token-key-v1", "3600s")
        old_registry = start("metahub-registry", "registry-key-v1", "3600s")
        from_old = login(old_token)
        assert kid_of(from_old) == key_id(k1)

        k2, v2 = put_key(moto)
        assert v2 == v1 + 1
        # Instances started after the rotation read version 2 and version 1.
        new_token = start("metahub-token", "token-key-v2", "3600s")
        new_registry = start("metahub-registry", "registry-key-v2", "3600s")
        # Version 2 does not sign before every instance can have read it (one refresh interval): the new token
        # instance still signs with version 1, which the old registry instance knows...
        from_new = login(new_token)
        assert kid_of(from_new) == key_id(k1)
        assert pull_status(old_registry, from_new) == 200
        # ...and the new registry instance takes the old instance's tokens.
        assert pull_status(new_registry, from_old) == 200
        # A token of version 2 (as signed once it is active) is good at the new instances already.
        assert pull_status(new_registry, resigned(from_old, k2, key_id(k2))) == 200

        # The switch, with instances that re-read every second (and tokens that live 2 s, to see the old key go).
        fast = {"METAHUB_TOKEN_TTL": "2"}
        registry_before = start("metahub-registry", "registry-before-v3", "1s", **fast)
        assert pull_status(registry_before, resigned(from_old, k2, key_id(k2))) == 200
        k3, v3 = put_key(moto)
        token_after = start("metahub-token", "token-after-v3", "1s", **fast)
        # One refresh interval after it was written, version 3 signs...
        signed_v3 = poll(lambda: (t := login(token_after)) and kid_of(t) == key_id(k3) and t, "version 3 signs")
        # ...and the instance that read version 2 before the rotation has re-read the key by then: no refusal.
        assert pull_status(registry_before, signed_v3) == 200
        # The previous version still verifies for one token lifetime after version 3 started signing...
        assert pull_status(registry_before, resigned(from_old, k2, key_id(k2))) == 200
        # ...then it is dropped; a version two rotations old, or a key never published, never verifies.
        poll(lambda: pull_status(registry_before, resigned(from_old, k2, key_id(k2))) == 401, "version 2 dropped")
        assert pull_status(registry_before, resigned(from_old, k1, key_id(k1))) == 401
        assert pull_status(registry_before, resigned(from_old, os.urandom(32), key_id(k3))) == 401
        assert pull_status(registry_before, signed_v3) in (200, 401)  # alive or expired (2 s): never a 5xx
        assert k3 != k2
    finally:
        for fn in functions:
            fn.stop()
