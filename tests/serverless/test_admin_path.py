"""The admin function reached the way an operator reaches it: SigV4-signed requests to its AWS_IAM Function URL
(never through the edge), then a pull through the edge with what it created.

The signature check is #13's (branch `deploy`: SigV4 signing in the CLI, a SigV4-verifying stand-in in tests/). Until
it is plugged into `conftest.SIGV4_CALLER`, only the refusal of unsigned requests runs here."""

from __future__ import annotations

import json

import pytest

import conftest
from conftest import start_admin_url

OPERATOR_ARN = "arn:aws:sts::123456789012:assumed-role/metahub-operators/ops"


@pytest.fixture(scope="module")
def admin_url(workdir, moto, redirecting_upstream, serve_hub, parameters):
    url = start_admin_url(workdir, moto, redirecting_upstream, serve_hub.store)
    yield url
    url.stop()


def test_unsigned_requests_never_reach_the_admin_function(admin_url):
    import requests

    for method, path in (("GET", "/admin/machine-types"), ("PUT", "/admin/machine-types/x")):
        r = requests.request(method, admin_url.url + path, data=b'{"features":[]}' if method == "PUT" else None, timeout=30)
        assert r.status_code == 403, r.text
        assert r.json() == {"Message": "Forbidden"}
    assert admin_url.pool.invocations == 0


@pytest.mark.skipif(conftest.SIGV4_CALLER is None, reason="needs #13 (branch deploy): plug its SigV4-verifying stand-in "
                    "into tests/serverless/conftest.py SIGV4_CALLER, and sign with its CLI instead of botocore below")
def test_operator_creates_a_machine_type_and_an_account_then_pulls(admin_url, edge, request, tmp_path):
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    import requests

    credentials = botocore.credentials.Credentials("AKIDEXAMPLE", "operator-secret-key")

    def signed(method: str, path: str, doc: dict) -> requests.Response:
        body = json.dumps(doc).encode()
        aws = botocore.awsrequest.AWSRequest(method=method, url=admin_url.url + path, data=body,
                                             headers={"Content-Type": "application/json"})
        botocore.auth.SigV4Auth(credentials, "lambda", "us-east-1").add_auth(aws)
        return requests.request(method, aws.url, data=body, headers=dict(aws.headers), timeout=30)

    put = signed("PUT", "/admin/machine-types/ops-broadwell", {"features": ["cpu:broadwell"]})
    assert put.status_code in (200, 201), put.text
    account = signed("PUT", "/admin/accounts/m-ops", {"machineType": "ops-broadwell", "password": "pw-ops-secret-0123"})
    assert account.status_code in (200, 201), account.text
    got = conftest.CLIENTS["skopeo"](request, f"{edge.host}/org/app:latest", ("m-ops", "pw-ops-secret-0123"), tmp_path)
    assert got == "cpu-broadwell"
