"""The admin function reached the way an operator reaches it: `metahub … --endpoint URL` signs each request with
SigV4 (the operator's AWS credentials from the standard environment) to the admin function's AWS_IAM Function URL
(never through the edge), where tests/sigv4_standin.py's Verifier stands in for Lambda's signature check; then a pull
through the edge with what the operator created."""

from __future__ import annotations

import pytest
import requests

import conftest
from conftest import e2e, start_admin_url


@pytest.fixture(scope="module")
def admin_url(workdir, moto, redirecting_upstream, serve_hub, parameters):
    url = start_admin_url(workdir, moto, redirecting_upstream, serve_hub.store)
    yield url
    url.stop()


def test_unsigned_requests_never_reach_the_admin_function(admin_url):
    for method, path in (("GET", "/admin/machine-types"), ("PUT", "/admin/machine-types/x")):
        r = requests.request(method, admin_url.url + path, data=b'{"features":[]}' if method == "PUT" else None, timeout=30)
        assert r.status_code == 403, r.text
        assert r.json() == {"Message": "Forbidden"}
    assert admin_url.pool.invocations == 0


def operator_cli(admin_url, *args: str, secret_key: str = conftest.OPERATOR_SECRET_KEY, input: bytes | None = None,
                 check: bool = True):
    """The CLI as an operator runs it against the deployed admin Function URL: AWS credentials, no admin secret, no
    store of its own (a store it opened would show as a missing file)."""
    env = {
        "METAHUB_STORE": "file:/nonexistent/never-opened.redb",
        "METAHUB_ADMIN_SECRET": "",
        "AWS_ACCESS_KEY_ID": conftest.OPERATOR_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": conftest.OPERATOR_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "RUST_LOG": "warn",
    }
    return e2e.run([e2e.METAHUB_BIN, *args, "--endpoint", admin_url.url], input=input, env=env, check=check)


def test_a_wrong_secret_key_never_reaches_the_admin_function(admin_url):
    before = admin_url.pool.invocations
    p = operator_cli(admin_url, "machine-type", "put", "never-made", "--feature", "cpu:zen2",
                     secret_key=conftest.OPERATOR_SECRET_KEY[:-1] + "x", check=False)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert b"refused" in p.stderr, p.stderr
    assert admin_url.pool.invocations == before


def test_operator_creates_a_machine_type_and_an_account_then_pulls(admin_url, edge, request, tmp_path):
    operator_cli(admin_url, "machine-type", "put", "ops-broadwell", "--feature", "cpu:broadwell")
    operator_cli(admin_url, "account", "put", "m-ops", "--machine-type", "ops-broadwell", "--password-stdin",
                 input=b"pw-ops-secret-0123")
    listed = operator_cli(admin_url, "account", "list").stdout.decode()
    assert "m-ops" in listed and "ops-broadwell" in listed, listed
    assert admin_url.pool.invocations >= 3, "every command went through the admin function"
    got = conftest.CLIENTS["skopeo"](request, f"{edge.host}/org/app:latest", ("m-ops", "pw-ops-secret-0123"), tmp_path)
    assert got == "cpu-broadwell"
