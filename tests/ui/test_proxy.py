"""`metahub admin ui --endpoint URL`: the local proxy that authenticates every request of the admin page (SigV4 for
the admin function's AWS_IAM Function URL, or METAHUB_ADMIN_SECRET for `metahub serve`), and what it refuses to
forward: other Host names (DNS rebinding), other origins, writes without the page's header, paths outside /admin."""

from __future__ import annotations

import re

import pytest
import requests
from selenium.webdriver.common.by import By

from conftest import Page
from e2e_conftest import ADMIN_SECRET, METAHUB_BIN, Proc, assert_registry_error, run, wait_until


def start_proxy(workdir, endpoint: str, env: dict) -> tuple[Proc, str]:
    proc = Proc("admin-ui-proxy", [METAHUB_BIN, "admin", "ui", "--endpoint", endpoint], workdir,
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
