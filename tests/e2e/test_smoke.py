"""infra/smoke.sh (run after every deploy) against a local `metahub serve`: it passes on a working front and
names the check that fails on a broken one."""

from __future__ import annotations

import subprocess

from conftest import ROOT, creds

SMOKE = ROOT / "infra" / "smoke.sh"


def smoke(url: str, login: tuple[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "METAHUB_SMOKE_LOGIN": login[0], "METAHUB_SMOKE_PASSWORD": login[1]}
    import os

    env["PATH"] = os.environ.get("PATH", env["PATH"])
    return subprocess.run(["bash", str(SMOKE), url, *args], env=env, capture_output=True, text=True, timeout=120)


def test_smoke_passes_against_a_working_front(metahub_file):
    p = smoke(metahub_file.url, creds("skylake"), "--image", "org/app:latest")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    for check in ("GET /v2/ -> 401, realm", "login as m-skylake", "GET org/app:latest", "GET child manifest",
                  "GET config blob", "HEAD org/app:latest -> Content-Length", "Cache-Control"):
        assert any(line.startswith("ok") and check in line for line in lines), (check, p.stdout)
    assert "smoke: all checks passed" in p.stdout


def test_smoke_passes_through_a_redirecting_upstream(metahub_redirect):
    p = smoke(metahub_redirect.url, creds("zen2"), "--image", "org/applist:latest")
    assert p.returncode == 0, p.stdout + p.stderr


def test_smoke_fails_on_bad_credentials_and_on_an_open_function_url(metahub_file):
    p = smoke(metahub_file.url, ("m-skylake", "wrong-password"), "--image", "org/app:latest")
    assert p.returncode == 1, p.stdout
    assert any(line.startswith("FAIL") and "login as m-skylake -> 401" in line for line in p.stdout.splitlines()), p.stdout
    # A "Function URL" that answers (metahub itself, without an origin secret) is what the check exists to catch.
    p = smoke(metahub_file.url, creds("skylake"), "--image", "org/app:latest", "--function-url", metahub_file.url)
    assert p.returncode == 1 and "FAIL  direct call to the Function URL -> 401" in p.stdout, p.stdout
    # The realm must be the URL given: a front advertising another realm fails the first check.
    p = smoke(metahub_file.url.replace("127.0.0.1", "localhost"), creds("skylake"), "--image", "org/app:latest")
    assert p.returncode == 1 and p.stdout.startswith("FAIL  GET /v2/ -> 401, realm"), p.stdout
