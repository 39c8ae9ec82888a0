"""An HTTPS upstream, as every public registry is: metahub checks the upstream's certificate against the system's
trust store (rustls on ring since issue 17; `SSL_CERT_FILE` names the test CA here) and refuses one it cannot verify,
with the registry error JSON and without a word about the upstream's address."""

from __future__ import annotations

import json

import pytest

from conftest import get_token, start_registry, tls_ca, v2
import registry_push


@pytest.fixture(scope="module")
def https_upstream(workdir):
    certificate = tls_ca.make_certificate(workdir / "upstream-tls-ca")
    up = start_registry(workdir, "upstream-https", tls=certificate)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REQUESTS_CA_BUNDLE", str(certificate.ca_file))  # the pushes verify the certificate too
        registry_push.push_test_content(up.url)
    yield up
    up.stop()


def test_pull_from_an_https_upstream_the_system_trusts(metahub_factory, https_upstream):
    hub = metahub_factory("file", https_upstream, shared=False, env={"SSL_CERT_FILE": str(https_upstream.ca_file)})
    try:
        token = get_token(hub, "skylake")
        index = v2(hub, "org/app/manifests/latest", token)
        assert index.status_code == 200, index.text
        child = json.loads(index.content)["manifests"][0]
        manifest = v2(hub, f"org/app/manifests/{child['digest']}", token)
        assert manifest.status_code == 200, manifest.text
        layer = json.loads(manifest.content)["layers"][0]["digest"]
        blob = v2(hub, f"org/app/blobs/{layer}", token)
        assert blob.status_code == 307 and blob.headers["Location"].startswith(https_upstream.url), blob.headers
    finally:
        hub.stop()


def test_an_upstream_certificate_nobody_vouches_for_is_refused(metahub_factory, https_upstream):
    hub = metahub_factory("file", https_upstream, shared=False)  # the system's roots only
    try:
        r = v2(hub, "org/app/manifests/latest", get_token(hub, "skylake"))
        assert 500 <= r.status_code < 600, (r.status_code, r.text)
        errors = r.json()["errors"]
        assert errors and errors[0]["code"] == "UNAVAILABLE", r.text
        assert str(https_upstream.port) not in r.text, "the upstream's address stays out of client messages"
    finally:
        hub.stop()
