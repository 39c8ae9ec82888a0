"""`metahub admin ui --endpoint URL`: the local proxy that authenticates every request of the admin page (SigV4 for
the admin function's AWS_IAM Function URL, or METAHUB_ADMIN_SECRET for `metahub serve`), and what it refuses to
forward: other Host names (DNS rebinding), other origins, writes without the page's header, paths outside /admin."""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By

from conftest import Page
from e2e_conftest import ADMIN_SECRET, METAHUB_BIN, Proc, assert_registry_error, run, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sigv4_standin import SigV4Proxy, Verifier  # noqa: E402  (AWS's IAM check of a Function URL, by botocore)

_proxies = itertools.count(1)
ACCESS_KEY = "AKIDMETAHUBUI"
SECRET_KEY = "ui/sigv4+secret/0123456789abcdefghijklmnopqrstuv"
REGION = "eu-west-1"


def aws_env(secret_key: str = SECRET_KEY) -> dict:
    """The operator's AWS credentials, and no admin secret: `admin ui` signs with SigV4."""
    return {"METAHUB_ADMIN_SECRET": "", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}


def start_proxy(workdir, endpoint: str, env: dict) -> tuple[Proc, str]:
    proc = Proc(f"admin-ui-proxy-{next(_proxies)}", [METAHUB_BIN, "admin", "ui", "--endpoint", endpoint], workdir,
                env={"RUST_LOG": "warn", **env})
    found = {}

    def printed():
        m = re.search(r"(http://127\.0\.0\.1:\d+)/admin/", proc.log_path.read_text(errors="replace"))
        if m:
            found["url"] = m.group(1)
        return bool(m)

    wait_until(printed, "admin ui prints its address", proc=proc)
    return proc, found["url"]


@pytest.fixture(scope="module")
def proxy(workdir, hub):
    proc, url = start_proxy(workdir, hub.url, {"METAHUB_ADMIN_SECRET": ADMIN_SECRET})
    yield url
    proc.stop()


def test_page_through_the_proxy(browser, proxy, hub):
    browser.delete_all_cookies()
    page = Page(browser, hub)
    browser.get("about:blank")
    browser.get(f"{proxy}/admin/#machine-types")
    page.find("#mt-name").send_keys("via-proxy")  # signed in: no sign-in form, the proxy authenticates
    page.find("#mt-features").send_keys("cpu:haswell")
    page.find("#mt-save").click()
    page.wait_flash("Saved machine type via-proxy")
    assert requests.get(f"{hub.url}/admin/machine-types/via-proxy", headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
                        timeout=60).json()["features"] == ["cpu:haswell"]
    assert browser.find_element(By.ID, "sign-out").is_displayed() is False


def test_proxy_refuses_what_is_not_the_page(proxy):
    host = proxy.removeprefix("http://")
    # reads are authenticated by the proxy, whatever the browser sent
    r = requests.get(f"{proxy}/admin/machine-types", headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 200, r.text
    r = requests.get(f"{proxy}/admin/", timeout=60)
    assert r.status_code == 200 and "default-src 'none'" in r.headers["Content-Security-Policy"]
    body = {"features": ["cpu:zen2"]}
    refused = [
        ("PUT", "/admin/machine-types/x", {}, 403),  # a write without the page's header
        ("PUT", "/admin/machine-types/x", {"X-MetaHub-CSRF": "-", "Origin": "http://evil.example"}, 403),
        ("GET", "/admin/machine-types", {"Host": f"rebound.example:{host.split(':')[1]}"}, 403),
        ("GET", "/v2/", {}, 404),
    ]
    for method, path, headers, status in refused:
        r = requests.request(method, f"{proxy}{path}", json=body, headers=headers, timeout=60)
        assert_registry_error(r.status_code, r.content, status)
    r = requests.put(f"{proxy}/admin/machine-types/x", json=body, timeout=60,
                     headers={"X-MetaHub-CSRF": "-", "Origin": proxy})
    assert r.status_code == 200, r.text


def test_proxy_listens_on_loopback_only():
    p = run([METAHUB_BIN, "admin", "ui", "--endpoint", "http://127.0.0.1:9", "--listen", "0.0.0.0:0"], check=False,
            env={"METAHUB_ADMIN_SECRET": ADMIN_SECRET})
    assert p.returncode != 0
    assert b"loopback only" in p.stderr


@pytest.fixture(scope="module")
def function_url(hub):
    """A stand-in for the admin function's AWS_IAM Function URL: verifies SigV4, then forwards to the hub."""
    standin = SigV4Proxy(Verifier({ACCESS_KEY: SECRET_KEY}, region=REGION), target=hub.url,
                         forward_headers=lambda principal: {"Authorization": f"Bearer {ADMIN_SECRET}"}).start()
    yield standin
    standin.stop()


def test_page_through_the_proxy_signs_with_sigv4(workdir, browser, hub, function_url):
    proc, url = start_proxy(workdir, function_url.url, aws_env())
    try:
        page = Page(browser, hub)
        browser.get("about:blank")
        browser.get(f"{url}/admin/#machine-types")
        page.find("#mt-name").send_keys("via-sigv4")
        page.find("#mt-features").send_keys("cpu:zen3")
        page.find("#mt-save").click()
        page.wait_flash("Saved machine type via-sigv4")
        page.find('tr[data-machine-type="via-sigv4"]')
        page.tab("matrix")
        page.tab("changes")
        page.wait_text("#changes-table", "via-sigv4")
        assert not function_url.refusals, function_url.refusals
        received = {(r.method, r.path.split("?")[0]) for r in function_url.received}
        assert {("GET", "/admin/"), ("GET", "/admin/ui/app.js"), ("PUT", "/admin/machine-types/via-sigv4")} <= received
        authorizations = [{k.lower(): v for k, v in r.headers.items()}.get("authorization", "") for r in function_url.received]
        assert all(a.startswith("AWS4-HMAC-SHA256 ") for a in authorizations), authorizations
    finally:
        proc.stop()


def test_wrong_aws_credentials_are_refused_by_the_function_url(workdir, function_url):
    proc, url = start_proxy(workdir, function_url.url, aws_env(secret_key="not-the-key"))
    try:
        before = len(function_url.refusals)
        r = requests.get(f"{url}/admin/machine-types", timeout=60)
        assert r.status_code == 403 and len(function_url.refusals) == before + 1
    finally:
        proc.stop()
