"""Fixtures for the admin page tests: a real Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium)
against `metahub serve --admin-secret-file`, in front of a real `docker-registry` holding the e2e test images.

The e2e harness (tests/e2e/conftest.py) is loaded under another module name, so that its processes, fixtures and
log attachment are shared rather than copied.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

E2E = Path(__file__).resolve().parents[1] / "e2e"
sys.path[:0] = [str(E2E), str(E2E.parent)]
from load_module import load_module  # noqa: E402

e2e = load_module("e2e_conftest", E2E / "conftest.py")

# the e2e fixtures and hooks this folder uses, registered here by name
from e2e_conftest import images, pytest_runtest_makereport, redirecting_upstream, upstream, workdir  # noqa: E402,F401

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 30  # seconds a page may take to show what a step waits for (a bound, not a speed assertion)


@pytest.fixture(scope="module")
def hub(workdir, upstream, images):
    """metahub with its admin API and page, on the file store, seeded with the e2e machine types and accounts."""
    h = e2e.start_admin_metahub(workdir, upstream, "file")
    yield h
    h.stop()


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium with a fresh profile; the flags keep it from reaching for the network."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} not found: apt-get install chromium chromium-driver (tests/install.sh)")
    profile = tempfile.mkdtemp(prefix="metahub-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # an explicit driver path: selenium must not try to download one
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The admin page in the browser, with the few steps the tests repeat."""

    def __init__(self, driver, hub):
        self.driver, self.hub = driver, hub

    def wait(self, condition, what: str):
        return WebDriverWait(self.driver, WAIT).until(condition, message=what)

    def find(self, css: str):
        return self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, css)), f"{css} visible")

    def open(self, tab: str = "matrix"):
        self.driver.get("about:blank")  # a new document even when only the #fragment differs
        self.driver.get(f"{self.hub.url}/admin/#{tab}")

    def sign_in(self, secret: str = e2e.ADMIN_SECRET):
        self.open()
        self.find("#secret").send_keys(secret)
        self.driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        self.find("#tabs")

    def tab(self, name: str):
        self.find(f'#tabs button[data-tab="{name}"]').click()
        self.wait(lambda d: d.find_element(By.ID, name).is_displayed(), f"tab {name} shown")

    def wait_text(self, css: str, text: str) -> str:
        """The text of `css` once it contains `text` (tables are redrawn after each load: wait, do not race)."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        def shown(d):
            try:
                t = d.find_element(By.CSS_SELECTOR, css).text
            except (NoSuchElementException, StaleElementReferenceException):
                return False
            return t if text in t else False

        return self.wait(shown, f"{css} showing {text!r}")

    def flash(self) -> str:
        return self.find("#flash").text

    def wait_flash(self, contains: str) -> str:
        self.wait(lambda d: contains in d.find_element(By.ID, "flash").text, f"message containing {contains!r}")
        return self.flash()

    def accept_confirm(self):
        self.wait(EC.alert_is_present(), "confirm dialog").accept()


@pytest.fixture
def page(browser, hub) -> Page:
    browser.delete_all_cookies()
    p = Page(browser, hub)
    p.sign_in()
    return p
