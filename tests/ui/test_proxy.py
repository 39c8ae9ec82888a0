"""`metahub admin ui --endpoint URL`: the local proxy that authenticates every request of the admin page (SigV4 for
the admin function's AWS_IAM Function URL, or METAHUB_ADMIN_SECRET for `metahub serve`), and what it refuses to
forward: other Host names (DNS rebinding), other origins, writes without the page's header, paths outside /admin
(after resolving `.` and `..`, percent-encoded or not), and any browser that did not open the URL it printed (which
carries the run's token, good for one exchange for a cookie)."""

from __future__ import annotations

import http.client
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


def start_proxy(workdir, endpoint: str, env: dict) -> tuple[Proc, str, str]:
    """The proxy, its address and the URL it printed (with the run's token)."""
    proc = Proc(f"admin-ui-proxy-{next(_proxies)}", [METAHUB_BIN, "admin", "ui", "--endpoint", endpoint], workdir,
                env={"RUST_LOG": "warn", **env})
    found = {}

    def printed():
        m = re.search(r"((http://127\.0\.0\.1:\d+)/admin/\?token=[0-9a-f]{64})", proc.log_path.read_text(errors="replace"))
        if m:
            found["link"], found["url"] = m.group(1), m.group(2)
        return bool(m)

    wait_until(printed, "admin ui prints its address", proc=proc)
    return proc, found["url"], found["link"]


def opened(link: str) -> requests.Session:
    """A client that opened the printed URL: it holds the proxy's cookie."""
    s = requests.Session()
    r = s.get(link, timeout=60)
    assert r.status_code == 200 and r.url.endswith("/admin/"), (r.status_code, r.url)
    return s


@pytest.fixture(scope="module")
def proxied(workdir, hub):
    proc, url, link = start_proxy(workdir, hub.url, {"METAHUB_ADMIN_SECRET": ADMIN_SECRET})
    yield url, link
    proc.stop()


@pytest.fixture(scope="module")
def proxy(proxied):
    return proxied[0]


@pytest.fixture(scope="module")
def client(proxied):
    """The one client that opened the printed URL (it can be opened once)."""
    return opened(proxied[1])


def test_page_through_the_proxy(workdir, browser, hub):
    proc, proxy, link = start_proxy(workdir, hub.url, {"METAHUB_ADMIN_SECRET": ADMIN_SECRET})
    browser.delete_all_cookies()
    page = Page(browser, hub)
    browser.get("about:blank")
    browser.get(f"{link}#machine-types")  # the fragment survives the redirect that drops the token
    page.find("#mt-name").send_keys("via-proxy")  # signed in: no sign-in form, the proxy authenticates
    page.find("#mt-features").send_keys("cpu:haswell")
    page.find("#mt-save").click()
    page.wait_flash("Saved machine type via-proxy")
    assert requests.get(f"{hub.url}/admin/machine-types/via-proxy", headers={"Authorization": f"Bearer {ADMIN_SECRET}"},
                        timeout=60).json()["features"] == ["cpu:haswell"]
    assert browser.find_element(By.ID, "sign-out").is_displayed() is False
    proc.stop()


def test_proxy_refuses_what_is_not_the_page(proxy, client):
    host = proxy.removeprefix("http://")
    # reads are authenticated by the proxy, whatever the browser sent
    r = client.get(f"{proxy}/admin/machine-types", headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 200, r.text
    r = client.get(f"{proxy}/admin/", timeout=60)
    assert r.status_code == 200 and "default-src 'none'" in r.headers["Content-Security-Policy"]
    body = {"features": ["cpu:zen2"]}
    refused = [
        ("PUT", "/admin/machine-types/x", {}, 403),  # a write without the page's header
        ("PUT", "/admin/machine-types/x", {"X-MetaHub-CSRF": "-", "Origin": "http://evil.example"}, 403),
        ("GET", "/admin/machine-types", {"Host": f"rebound.example:{host.split(':')[1]}"}, 403),
        ("GET", "/v2/", {}, 404),
    ]
    for method, path, headers, status in refused:
        r = client.request(method, f"{proxy}{path}", json=body, headers=headers, timeout=60)
        assert_registry_error(r.status_code, r.content, status)
    r = client.put(f"{proxy}/admin/machine-types/x", json=body, timeout=60,
                   headers={"X-MetaHub-CSRF": "-", "Origin": proxy})
    assert r.status_code == 200, r.text


def raw_get(proxy: str, path: str, cookie: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client resolves its dots), with the proxy's cookie."""
    host = proxy.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=60)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("Cookie", f"metahub_ui={cookie}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_proxy_forwards_nothing_outside_admin_whatever_the_dots(proxy, client, hub):
    cookie = client.cookies["metahub_ui"]
    for path in ["/admin/../token", "/admin/%2e%2e/token", "/admin/%2E%2E/v2/x", "/admin/./../metrics",
                 "/admin/.%2e/token?service=metahub", "/admin/x/%2e%2e/%2e%2e/v2/", "/admin/..%2ftoken",
                 "/admin/%2e%2e%2ftoken", "/admin/%5c..%5ctoken", "/admin/../../token"]:
        status, body = raw_get(proxy, path, cookie)
        assert_registry_error(status, body, 404, {"NOT_FOUND"})
    # dots that stay under /admin are resolved, and the resolved path is what is forwarded
    status, body = raw_get(proxy, "/admin/x/%2e%2e/machine-types", cookie)
    assert status == 200 and body.startswith(b"["), body


def test_the_printed_url_is_needed_and_good_once(workdir, hub):
    proc, proxy, link = start_proxy(workdir, hub.url, {"METAHUB_ADMIN_SECRET": ADMIN_SECRET})
    try:
        # another local user, who did not see the printed URL
        for path in ["/admin/", "/admin/machine-types", f"/admin/?token={'0' * 64}"]:
            r = requests.get(f"{proxy}{path}", timeout=60, allow_redirects=False)
            assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
        s = opened(link)
        assert s.get(f"{proxy}/admin/machine-types", timeout=60).status_code == 200
        assert s.cookies["metahub_ui"] not in link, "the cookie is not the token"
        # the link was used: another browser that copies it later is refused
        r = requests.get(link, timeout=60, allow_redirects=False)
        assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
        r = requests.get(f"{proxy}/admin/machine-types", cookies={"metahub_ui": "0" * 64}, timeout=60)
        assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
    finally:
        proc.stop()


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
    proc, url, link = start_proxy(workdir, function_url.url, aws_env())
    try:
        page = Page(browser, hub)
        browser.get("about:blank")
        browser.get(f"{link}#machine-types")
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
    proc, url, link = start_proxy(workdir, function_url.url, aws_env(secret_key="not-the-key"))
    try:
        before = len(function_url.refusals)
        r = opened_anyway(link).get(f"{url}/admin/machine-types", timeout=60)
        assert r.status_code == 403 and len(function_url.refusals) == before + 1
    finally:
        proc.stop()


def opened_anyway(link: str) -> requests.Session:
    """A client that opened the printed URL, whatever the admin API answered for the page."""
    s = requests.Session()
    r = s.get(link, timeout=60, allow_redirects=False)
    assert r.status_code == 303, r.status_code
    return s
