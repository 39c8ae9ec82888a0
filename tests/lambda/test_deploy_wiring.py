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
