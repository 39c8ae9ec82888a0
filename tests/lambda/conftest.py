"""Fixtures for the Lambda handler tests: the REAL function binaries driven through a stand-in Lambda Runtime API
(`runtime_api.py`), with moto for DynamoDB and SSM and a real `docker-registry` as the upstream.

Every process listens on 127.0.0.1 and is stopped at the end of the session; the logs of all of them are attached to
a failing test's report. The start-up time of each binary is printed at the end of the session.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "e2e"))
sys.path.insert(0, str(HERE.parents[1] / "tests"))
import iam_check  # noqa: E402  (tests/iam_check.py)
import log_secrets  # noqa: E402  (the e2e check that no secret reaches a log)
import registry_push  # noqa: E402  (the e2e helper's deterministic test images)
from lambda_harness import (  # noqa: E402
    ADMIN_ARN,
    LOGIN,
    MACHINE_TYPE,
    METAHUB_BIN,
    ORIGIN_SECRET,
    PASSWORD,
    SERVICE,
    TABLE,
    TIMINGS,
    Function,
    Moto,
    Proc,
    Seeded,
    Upstream,
    _PROCS,
    admin_env,
    basic,
    clean_env,
    event,
    free_port,
    full_env,
    run,
    seed_parameters,
    start_function,
    stop_all,
    wait_until,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for p in _PROCS:
            report.sections.append((f"log {p.name} ({p.log_path})", p.tail()))


def pytest_terminal_summary(terminalreporter):
    iam_check.terminal_summary(terminalreporter)
    if TIMINGS:
        terminalreporter.section("Lambda function start-up (process start -> ...)")
        for name, t in sorted(TIMINGS.items()):
            terminalreporter.write_line(
                f"{name:18} first /next poll (init done) {t['init'] * 1000:7.1f} ms   first answered invocation {t['first_answer'] * 1000:7.1f} ms"
            )




@pytest.fixture(autouse=True)
def iam_checked():
    """Every AWS call the function instances made during the test is allowed by their role in template.yaml."""
    yield
    denied = iam_check.denied_message()
    if denied:
        pytest.fail(denied, pytrace=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lambda")
    print(f"\nlambda test work dir and logs: {d}")
    _LOG_DIRS.append(d)
    yield d
    stop_all()


_LOG_DIRS: list[Path] = []


def pytest_sessionfinish(session, exitstatus):
    """No password, origin secret or token in any function's log (issue 20)."""
    if _LOG_DIRS:
        stop_all()
        found = log_secrets.leaks(_LOG_DIRS[0], [PASSWORD, ORIGIN_SECRET, "upstream:pass"], {LOGIN: PASSWORD})
        log_secrets.report(session, found)



@pytest.fixture(scope="session")
def upstream(workdir) -> Upstream:
    """`docker-registry serve` with filesystem storage; open (no auth), like the e2e upstreams."""
    root = workdir / "upstream" / "data"
    root.mkdir(parents=True)
    port = free_port()
    config = workdir / "upstream" / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: lambda-test-secret}}\n"
    )
    proc = Proc("upstream", ["docker-registry", "serve", str(config)], workdir, clean_env({}))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/v2/", timeout=2).status_code == 200, "docker-registry /v2/", proc=proc)
    return Upstream(url, proc)


@pytest.fixture(scope="session")
def images(upstream) -> registry_push.Pushed:
    return registry_push.push_test_content(upstream.url)



@pytest.fixture(scope="session")
def moto(workdir) -> Moto:
    port = free_port()
    proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], workdir, clean_env({}))
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2).status_code < 500, "moto_server", proc=proc)
    return Moto(port, proc)



@pytest.fixture(scope="session")
def seeded(moto) -> Seeded:
    """The table (created and filled with the real CLI) and the SSM parameters the functions read."""
    env = clean_env(moto.env)
    store = ["--store", f"dynamodb:{TABLE}"]
    run([METAHUB_BIN, "store", "init", *store], env)
    name, features = MACHINE_TYPE
    run([METAHUB_BIN, "machine-type", "put", name, *[a for f in features for a in ("--feature", f)], *store], env)
    run([METAHUB_BIN, "account", "put", LOGIN, "--machine-type", name, "--password-stdin", *store], env, input=PASSWORD.encode())
    key = seed_parameters(moto.endpoint)
    return Seeded(signing_key=key)


# ---------------------------------------------------------------------------------------------
# the functions



@pytest.fixture(scope="session")
def registry_fn(workdir, moto, upstream, images, seeded) -> Function:
    fn = start_function(workdir, "metahub-registry", full_env(moto, upstream), event("GET", "/v2/"))
    yield fn
    fn.stop()


@pytest.fixture(scope="session")
def token_fn(workdir, moto, upstream, seeded) -> Function:
    fn = start_function(workdir, "metahub-token", full_env(moto, upstream), event("GET", "/token", query=f"service={SERVICE}"))
    yield fn
    fn.stop()


@pytest.fixture(scope="session")
def admin_fn(workdir, moto, upstream, images, seeded) -> Function:
    # reached with SigV4 directly (AuthType AWS_IAM), not through CloudFront: no origin header
    fn = start_function(workdir, "metahub-admin", admin_env(moto, upstream),
                        event("GET", "/admin/machine-types", origin=False, iam_caller=ADMIN_ARN))
    yield fn
    fn.stop()



@pytest.fixture(scope="session")
def token(token_fn) -> str:
    """A pull token for org/app, issued by the token function."""
    r = token_fn.request(
        "GET", "/token", query=urllib.parse.urlencode({"service": SERVICE, "scope": "repository:org/app:pull"}), headers={"authorization": basic(LOGIN, PASSWORD)}
    )
    assert r.status == 200, r.body
    return r.json()["token"]
