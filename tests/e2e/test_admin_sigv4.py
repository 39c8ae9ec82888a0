"""`metahub … --endpoint URL` without an admin secret signs with SigV4 (the deployed admin Function URL is AWS_IAM).

The signatures are checked by tests/sigv4_standin.py, which recomputes them with botocore (an implementation
independent of the aws-sigv4 crate the CLI uses) and forwards verified requests to `metahub serve
--admin-secret-file` with the admin secret - what Lambda's IAM check plus the admin function do in AWS."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ADMIN_SECRET, METAHUB_BIN, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sigv4_standin import Refused, SigV4Proxy, Verifier, sign  # noqa: E402

ACCESS_KEY = "AKIDMETAHUBE2E"
SECRET_KEY = "e2e/sigv4+secret/0123456789abcdefghijklmnopqrstuv"
REGION = "eu-west-1"


@pytest.fixture
def proxy(admin_metahub):
    verifier = Verifier({ACCESS_KEY: SECRET_KEY}, region=REGION)
    p = SigV4Proxy(verifier, target=admin_metahub.url,
                   forward_headers=lambda principal: {"Authorization": f"Bearer {ADMIN_SECRET}"}).start()
    yield p
    p.stop()


def signed_cli(proxy: SigV4Proxy, *args: str, secret_key: str = SECRET_KEY, input: bytes | None = None, check: bool = True):
    env = {
        "METAHUB_STORE": "file:/nonexistent/never-opened.redb",
        "METAHUB_ADMIN_SECRET": "",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "RUST_LOG": "warn",
    }
    return run([METAHUB_BIN, *args, "--endpoint", proxy.url], input=input, env=env, check=check)


def test_the_cli_signs_every_request_and_the_signature_verifies(proxy):
    listed = signed_cli(proxy, "machine-type", "list", "--json")
    assert "skylake" in {m["name"] for m in json.loads(listed.stdout)}
    signed_cli(proxy, "machine-type", "put", "sigv4-type", "--feature", "cpu:haswell")
    signed_cli(proxy, "account", "put", "sigv4-login", "--machine-type", "sigv4-type", "--password-stdin", input=b"pw-sigv4-login-0123")
    assert b"sigv4-login" in signed_cli(proxy, "account", "list").stdout
    signed_cli(proxy, "account", "delete", "sigv4-login")
    signed_cli(proxy, "machine-type", "delete", "sigv4-type")
    assert not proxy.refusals, proxy.refusals
    methods = {r.method for r in proxy.received}
    assert {"GET", "PUT", "DELETE"} <= methods
    for r in proxy.received:
        h = {k.lower(): v for k, v in r.headers.items()}
        assert h["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        assert f"/{REGION}/lambda/aws4_request" in h["authorization"]
        assert "bearer" not in h["authorization"].lower()
        # Signed payload, not UNSIGNED-PAYLOAD: the body is part of what the signature covers.
        assert h["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"


def test_a_wrong_secret_key_is_refused(proxy):
    p = signed_cli(proxy, "machine-type", "put", "never-made", "--feature", "cpu:zen2", secret_key=SECRET_KEY[:-1] + "x", check=False)
    assert p.returncode != 0
    assert b"signature" in p.stderr.lower() and b"refused" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert proxy.refusals and all("does not match" in r for r in proxy.refusals)
    assert not any(r.method == "PUT" and "never-made" in r.path for r in proxy.received if not proxy.refusals)


def test_a_replayed_stale_signature_and_a_tampered_body_are_refused(proxy):
    signed_cli(proxy, "machine-type", "put", "replayed", "--feature", "cpu:broadwell")
    (put,) = [r for r in proxy.received if r.method == "PUT" and r.path.endswith("/replayed")]
    # Ten minutes later, the very same bytes: AWS allows 5 minutes of skew.
    proxy.verifier.clock = lambda: datetime.now(timezone.utc) + timedelta(minutes=10)
    status, body = proxy.replay(put)
    assert status == 403 and b"expired" in body, body
    proxy.verifier.clock = lambda: datetime.now(timezone.utc)
    # Same signature over another body.
    tampered = type(put)(put.method, put.path, put.headers, put.body.replace(b"cpu:broadwell", b"cpu:zen4xxxxx"))
    status, body = proxy.replay(tampered)
    assert status == 403 and b"x-amz-content-sha256" in body, body
    signed_cli(proxy, "machine-type", "delete", "replayed")


def test_the_standin_agrees_with_botocore_and_refuses_what_aws_refuses():
    v = Verifier({ACCESS_KEY: SECRET_KEY}, region=REGION)
    url = "https://abc.lambda-url.eu-west-1.on.aws/admin/machine-types?x=1"
    headers = sign("PUT", url, {"Host": "abc.lambda-url.eu-west-1.on.aws", "Content-Type": "application/json"}, b"{}",
                   ACCESS_KEY, SECRET_KEY, REGION)
    assert v.verify("PUT", url, headers, b"{}").access_key == ACCESS_KEY
    for what, change in {
        "unknown key": lambda h: {**h, "Authorization": h["Authorization"].replace(ACCESS_KEY, "AKIDOTHER")},
        "other region": lambda h: sign("PUT", url, {"Host": "abc.lambda-url.eu-west-1.on.aws"}, b"{}", ACCESS_KEY, SECRET_KEY, "us-east-1"),
        "unsigned": lambda h: {k: v for k, v in h.items() if k != "Authorization"},
        "stale": lambda h: sign("PUT", url, {"Host": "abc.lambda-url.eu-west-1.on.aws"}, b"{}", ACCESS_KEY, SECRET_KEY, REGION,
                                at=datetime.now(timezone.utc) - timedelta(minutes=6)),
    }.items():
        with pytest.raises(Refused):
            v.verify("PUT", url, change(headers), b"{}")
            pytest.fail(what)
