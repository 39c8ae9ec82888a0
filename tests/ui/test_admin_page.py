"""The admin page at /admin/ in a real Chromium: machine types and accounts created through the forms, the matrix of
watched images × machine types following a feature edit, an explanation opened from a cell, user input shown as
text, and the page's security design (CSP, HttpOnly session cookie, CSRF token on writes)."""

from __future__ import annotations

import os
import shutil

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from conftest import Page
from e2e_conftest import ADMIN_SECRET, assert_registry_error

AUTH = {"Authorization": f"Bearer {ADMIN_SECRET}"}
XSS = "x:<img/src=x/onerror=window.__pwned=1><script>window.__pwned=2</script>"


def api(hub, method: str, path: str, body=None, **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/admin/{path}", json=body, headers=kw.pop("headers", AUTH), timeout=60, **kw)


def matrix_cell(page, image: str, machine_type: str):
    return page.find(f'td.cell[data-image="{image}"][data-machine-type="{machine_type}"]')


def test_create_machine_type_and_account(page, hub):
    page.tab("machine-types")
    page.find("#mt-name").send_keys("ui-node")
    page.find("#mt-features").send_keys("cpu:skylak")  # a typo: refused with the CLI's nearest names
    page.find("#mt-save").click()
    assert "did you mean" in page.wait_flash("skylake")
    features = page.find("#mt-features")
    features.clear()
    features.send_keys("cpu:skylake\nfabric:efa")
    page.find("#mt-save").click()
    page.wait_flash("Saved machine type ui-node")
    row = page.find('tr[data-machine-type="ui-node"]')
    assert [t.text for t in row.find_elements(By.CSS_SELECTOR, ".tag")] == ["cpu:skylake", "fabric:efa"]
    assert api(hub, "GET", "machine-types/ui-node").json()["features"] == ["cpu:skylake", "fabric:efa"]

    page.tab("accounts")
    page.find("#account-login").send_keys("ui-login")
    Select(page.find("#account-machine-type")).select_by_value("ui-node")
    page.find("#account-password").send_keys("ui-password-123456")
    page.driver.find_element(By.CSS_SELECTOR, "#account-form button").click()
    page.wait_flash("Created account ui-login")
    page.find('tr[data-login="ui-login"]')
    # the account works: a registry token for its credentials
    token = requests.get(f"{hub.url}/token", params={"service": "metahub", "scope": "repository:org/app:pull"},
                         auth=("ui-login", "ui-password-123456"), timeout=60)
    assert token.status_code == 200, token.text

    # move it to another machine type (its password stays), then see it listed under that type
    Select(page.find('tr[data-login="ui-login"] select')).select_by_value("zen2")
    page.wait_flash("ui-login now pulls as zen2")
    assert api(hub, "GET", "accounts/ui-login").json()["machineType"] == "zen2"
    page.tab("machine-types")
    page.wait_text('tr[data-machine-type="zen2"]', "ui-login")

    page.tab("changes")
    log = page.wait_text("#changes-table", "ui-login machineType=zen2")
    assert "put-account" in log and "ui-login machineType=zen2" in log and "admin-secret (page, session " in log


def test_matrix_cell_follows_a_feature_edit_and_explains(page, hub):
    assert api(hub, "PUT", "machine-types/ui-matrix", {"features": ["cpu:broadwell"]}).status_code == 200
    page.open("matrix")
    page.find("#watch-image").send_keys("org/app")
    page.driver.find_element(By.CSS_SELECTOR, "#watch-form button[type=submit]").click()
    page.wait_flash("Watching org/app")
    cell = matrix_cell(page, "org/app:latest", "ui-matrix")
    assert "cpu:broadwell" in cell.text and "linux/amd64" in cell.text, cell.text

    page.tab("machine-types")
    page.find('tr[data-machine-type="ui-matrix"] button').click()  # Edit
    features = page.find("#mt-features")
    features.clear()
    features.send_keys("cpu:skylake")
    page.find("#mt-save").click()
    page.wait_flash("Saved machine type ui-matrix")

    page.tab("matrix")
    cell = 'td.cell[data-image="org/app:latest"][data-machine-type="ui-matrix"]'
    assert "cpu:broadwell" not in page.wait_text(cell, "cpu:skylake")

    # no build fits: a type whose only feature no entry of org/featuredonly offers
    assert api(hub, "POST", "watched-images", {"image": "org/featuredonly:latest"}).status_code == 201
    page.find("#matrix-refresh").click()
    page.wait_text('td.cell[data-image="org/featuredonly:latest"][data-machine-type="zen2"]', "no build fits")

    # the explanation, entry by entry, for the skylake cell
    matrix_cell(page, "org/app:latest", "ui-matrix").click()
    page.find("#explain-entries")
    assert "org/app:latest for ui-matrix" in page.find("#explain-title").text
    rows = page.driver.find_elements(By.CSS_SELECTOR, "#explain-entries tbody tr")
    expected = api(hub, "GET", "explain", params={"machineType": "ui-matrix", "image": "org/app:latest"}).json()
    assert len(rows) == len(expected["entries"]) == 8
    served = [r.text for r in rows if "served-row" in r.get_attribute("class")]
    assert any("cpu:skylake" in r for r in served), served
    assert all(e["reason"] in page.find("#explain-table").text for e in expected["entries"])

    matrix_cell(page, "org/featuredonly:latest", "zen2").click()
    page.wait_text("#explain-summary", "No build fits")


def test_xss_payload_in_a_feature_is_text(page, hub):
    assert api(hub, "PUT", "machine-types/ui-xss", {"features": [XSS]}).status_code == 200
    page.tab("machine-types")
    tags = page.find('tr[data-machine-type="ui-xss"]').find_elements(By.CSS_SELECTOR, ".tag")
    assert [t.text for t in tags] == [XSS]
    page.tab("matrix")  # the payload is in a column header there
    page.find('th[data-machine-type="ui-xss"]')
    page.tab("changes")
    page.wait_text("#changes-table", XSS)
    assert page.driver.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert page.driver.execute_script("return window.__pwned === undefined")


def test_session_cookie_is_http_only_and_writes_need_the_csrf_token(page, hub):
    assert page.driver.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    cookie = page.driver.get_cookie("metahub_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    jar = {"metahub_admin": cookie["value"]}
    # the cookie alone reads, but does not write
    assert api(hub, "GET", "machine-types", headers={}, cookies=jar).status_code == 200
    r = api(hub, "PUT", "machine-types/ui-csrf", {"features": []}, headers={}, cookies=jar)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    r = api(hub, "PUT", "machine-types/ui-csrf", {"features": []}, headers={"X-MetaHub-CSRF": "forged"}, cookies=jar)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    csrf = api(hub, "GET", "session", headers={}, cookies=jar).json()["csrf"]
    r = api(hub, "PUT", "machine-types/ui-csrf", {"features": []}, headers={"X-MetaHub-CSRF": csrf}, cookies=jar)
    assert r.status_code == 200, r.text
    # a forged or absent session reads nothing
    for jar_ in ({}, {"metahub_admin": "99999999999.AAAA"}):
        r = api(hub, "GET", "matrix", headers={}, cookies=jar_)
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    # signing out ends the page's session
    page.find("#sign-out").click()
    page.find("#sign-in")
    assert page.driver.get_cookie("metahub_admin") is None


def test_assets_are_public_with_a_strict_policy_and_sign_in_is_checked(hub):
    for path, kind in (("", "text/html"), ("ui/app.js", "text/javascript"), ("ui/app.css", "text/css")):
        r = requests.get(f"{hub.url}/admin/{path}", timeout=60)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = requests.get(f"{hub.url}/admin/", timeout=60).text
    assert "<script>" not in html and "style=" not in html  # nothing inline: the policy allows none
    assert requests.get(f"{hub.url}/admin/session", timeout=60).json() == {"signedIn": False, "mode": "secret"}
    # behind a proxy that adds the bearer secret, the page is signed in and needs no token
    assert api(hub, "GET", "session").json() == {"signedIn": True, "mode": "secret", "via": "bearer", "csrf": ""}
    r = requests.post(f"{hub.url}/admin/session", json={"secret": "x" * len(ADMIN_SECRET)}, timeout=60)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert "set-cookie" not in r.headers
    r = requests.post(f"{hub.url}/admin/session", data={"secret": ADMIN_SECRET}, timeout=60)  # a cross-site form
    assert_registry_error(r.status_code, r.content, 400, {"INVALID"})
    r = requests.post(f"{hub.url}/admin/session", json={"secret": ADMIN_SECRET}, timeout=60)
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]


def test_watched_images_api(hub):
    r = api(hub, "POST", "watched-images", {"image": "not a reference"})
    assert_registry_error(r.status_code, r.content, 400, {"NAME_INVALID"})
    assert api(hub, "POST", "watched-images", {"image": "org/single"}).status_code == 201
    assert api(hub, "POST", "watched-images", {"image": "org/single:latest"}).status_code == 200  # already there
    assert "org/single:latest" in api(hub, "GET", "watched-images").json()
    matrix = api(hub, "GET", "matrix").json()
    row = next(r for r in matrix["images"] if r["image"] == "org/single:latest")
    assert all(c["passthrough"] for c in row["cells"]) and len(row["cells"]) == len(matrix["machineTypes"])
    assert api(hub, "POST", "watched-images", {"image": "org/missing:1"}).status_code == 201
    row = next(r for r in api(hub, "GET", "matrix").json()["images"] if r["image"] == "org/missing:1")
    assert row["fault"]["code"] == "MANIFEST_UNKNOWN"  # one row's error, not the whole matrix's
    assert api(hub, "DELETE", "watched-images", params={"image": "org/missing:1"}).status_code == 204
    r = api(hub, "DELETE", "watched-images", params={"image": "org/missing:1"})
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})
    assert api(hub, "GET", "watched-images", headers={}).status_code == 401


def test_matrix_screenshot(browser, hub, tmp_path):
    """The README's picture of the matrix; set METAHUB_UI_SCREENSHOT=docs/img/admin-matrix.png to refresh it."""
    for image in ("org/app:latest", "org/applist:latest", "org/featuredonly:latest", "org/single:latest"):
        assert api(hub, "POST", "watched-images", {"image": image}).status_code in (200, 201)
    for name in [t["name"] for t in api(hub, "GET", "machine-types").json()]:
        if name.startswith("ui-"):  # the other tests' types: keep the picture to the e2e fleet
            api(hub, "DELETE", f"machine-types/{name}")
    browser.delete_all_cookies()
    page = Page(browser, hub)
    page.sign_in()
    browser.set_window_size(1400, 900)
    page.wait_text('td.cell[data-image="org/app:latest"][data-machine-type="cascadelake-a100"]', "nvcap")
    matrix_cell(page, "org/app:latest", "skylake").click()
    page.find("#explain-entries")
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "admin-matrix.png"
    assert browser.save_screenshot(str(shot))
    target = os.environ.get("METAHUB_UI_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
