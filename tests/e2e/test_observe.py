"""What an operator sees (issue 20): one JSON access line per request and Prometheus metrics on `--metrics-listen`,
with the right values for a filtered pull, a cached one, a stale answer, a failed and a throttled login; no secret
in the log. The front sits behind conftest's FaultProxy so the upstream can fail on demand."""

from __future__ import annotations

import json
import re

import pytest
import requests

from conftest import creds, free_port, get_token, push_fresh_index, start_configured_metahub, v2
import log_secrets

pytestmark = pytest.mark.usefixtures("healthy_proxy")

WRONG_PASSWORD = "observe-wrong-password-123"


@pytest.fixture(scope="module")
def observed(workdir, proxy, images):
    port = free_port()
    hub = start_configured_metahub(
        workdir,
        proxy,
        "metahub-observe",
        # the tag window off: each pull's upstream calls are counted
        ["--upstream-timeout", "2s", "--tag-ttl", "0", "--metrics-listen", f"127.0.0.1:{port}"],
        env={"METAHUB_LOG_FORMAT": "json"},
    )
    hub.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield hub
    # What an operator would scrape after this module, kept beside the logs.
    (workdir / "metrics-after-test_observe.txt").write_text(requests.get(hub.metrics_url, timeout=5).text)
    hub.stop()


def last_access(hub, **match) -> dict:
    found = [line for line in hub.access_lines() if all(line.get(k) == v for k, v in match.items())]
    assert found, f"no access line with {match}; lines: {hub.access_lines()[-5:]}"
    return found[-1]


SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? ([0-9.eE+-]+|NaN)$')


def scrape(hub) -> dict[tuple[str, frozenset], float]:
    r = requests.get(hub.metrics_url, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_filtered_pull_then_a_cached_one(observed, upstream, images):
    tag = "observe-filtered"
    _, upstream_digest = push_fresh_index(upstream.url, images, tag)
    token = get_token(observed, "skylake")
    # The children's NVIDIA requirements are read once per child digest (a GET of each child and of its config, the
    # first time any index lists it): read them here, so that what follows counts the index path alone.
    assert v2(observed, "org/app/manifests/latest", token).status_code == 200
    before = scrape(observed)

    r = v2(observed, f"org/app/manifests/{tag}", token)
    assert r.status_code == 200, r.text
    line = last_access(observed, route="manifest", reference=tag)
    assert line["repository"] == "org/app"
    assert line["machine_type"] == "skylake"
    assert line["answer"] == "filtered"
    assert line["digest"] == r.headers["Docker-Content-Digest"] != upstream_digest
    assert line["status"] == 200 and line["method"] == "GET"
    assert line["upstream"] == "head:ok get:ok" and line["upstream_requests"] == 2
    assert line["cache_hits"] == 0 and line["cache_misses"] == 2  # filtered index, then the upstream index
    assert line["request_id"] and line["duration_ms"] >= line["upstream_ms"] >= 0

    again = v2(observed, f"org/app/manifests/{tag}", token, method="HEAD")
    assert again.headers["Docker-Content-Digest"] == line["digest"]
    cached = last_access(observed, route="manifest", reference=tag, method="HEAD")
    assert cached["upstream"] == "head:ok" and cached["cache_hits"] == 1 and cached["answer"] == "filtered"
    assert cached["request_id"] != line["request_id"]

    after = scrape(observed)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("metahub_pulls_total", machine_type="skylake", result="filtered") == 2
    assert delta("metahub_upstream_requests_total", kind="head", result="ok") == 2
    assert delta("metahub_upstream_requests_total", kind="get", result="ok") == 1
    assert delta("metahub_cache_lookups_total", cache="filtered", result="miss") == 1
    assert delta("metahub_cache_lookups_total", cache="filtered", result="hit") == 1
    assert delta("metahub_upstream_request_duration_seconds_count", kind="head") == 2
    assert delta("metahub_requests_total", route="manifest", status="200") == 2


def test_a_digest_pull_and_a_blob(observed, upstream, images):
    tag = "observe-digest"
    push_fresh_index(upstream.url, images, tag)
    token = get_token(observed, "zen2")
    served = v2(observed, f"org/app/manifests/{tag}", token).headers["Docker-Content-Digest"]
    r = v2(observed, f"org/app/manifests/{served}", token)
    assert r.status_code == 200
    line = last_access(observed, route="manifest", reference=served)
    assert (line["answer"], line["upstream_requests"], line["machine_type"]) == ("generated", 0, "zen2")

    layer = json.loads(r.content)["manifests"][0]["digest"]
    child = json.loads(v2(observed, f"org/app/manifests/{layer}", token).content)
    blob = child["layers"][0]["digest"]
    b = v2(observed, f"org/app/blobs/{blob}", token)
    assert b.status_code == 307
    line = last_access(observed, route="blob", reference=blob)
    assert line["answer"] == "redirect" and line["upstream"] == "blob:ok" and line["status"] == 307
    assert "location" not in json.dumps(line).lower()


def test_a_stale_answer(observed, proxy, upstream, images):
    tag = "observe-stale"
    push_fresh_index(upstream.url, images, tag)
    token = get_token(observed, "skylake")
    first = v2(observed, f"org/app/manifests/{tag}", token)
    assert first.status_code == 200
    before = scrape(observed)

    proxy.set("503", match=r"^/v2/org/app/manifests/")
    r = v2(observed, f"org/app/manifests/{tag}", token)
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == first.headers["Docker-Content-Digest"]
    line = last_access(observed, route="manifest", reference=tag)
    assert line["answer"] == "stale" and line["status"] == 200
    assert line["digest"] == first.headers["Docker-Content-Digest"]
    calls = line["upstream"].split()
    assert calls and all(c.startswith("head:") and c != "head:ok" for c in calls), calls

    after = scrape(observed)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("metahub_stale_answers_total") == 1
    assert delta("metahub_pulls_total", machine_type="skylake", result="stale") == 1
    failed_heads = sum(v - value(before, n, **dict(l)) for (n, l), v in after.items()
                       if n == "metahub_upstream_requests_total" and ("kind", "head") in l and ("result", "ok") not in l)
    assert failed_heads == len(calls)


def test_a_failed_login(observed):
    login, _ = creds("skylake")
    before = scrape(observed)
    r = requests.get(f"{observed.url}/token", params={"service": "metahub", "scope": "repository:org/app:pull"},
                     auth=(login, WRONG_PASSWORD), timeout=10)
    assert r.status_code == 401
    line = last_access(observed, route="token", status=401)
    assert (line["login"], line["login_result"], line["client"]) == (login, "failed", "127.0.0.1")
    assert "machine_type" not in line
    after = scrape(observed)
    assert value(after, "metahub_logins_total", result="failed") - value(before, "metahub_logins_total", result="failed") == 1

    get_token(observed, "graviton")
    ok = last_access(observed, route="token", status=200)
    assert (ok["login"], ok["login_result"], ok["machine_type"]) == (creds("graviton")[0], "ok", "graviton")


def test_no_secret_in_the_log(observed):
    """This front's own log; conftest's session-finish check covers every log of the suite."""
    log_dir = observed.proc.log_path.parent
    accounts = dict(creds(mt) for mt in ("skylake", "zen2", "graviton"))
    found = [f for f in log_secrets.leaks(log_dir, [*accounts.values(), WRONG_PASSWORD, *log_secrets.ISSUED_TOKENS], accounts)
             if f.startswith(observed.proc.log_path.name)]
    assert not found
    assert observed.access_lines(), "the check read access lines"


def test_throttled_logins_are_counted(observed):
    """Last: it locks 127.0.0.1 out of this front's logins for a minute."""
    before = scrape(observed)
    statuses = []
    for _ in range(12):
        r = requests.get(f"{observed.url}/token", auth=("observe-nobody", WRONG_PASSWORD), timeout=10)
        statuses.append(r.status_code)
    assert statuses[-1] == 429, statuses
    line = last_access(observed, route="token", status=429)
    assert (line["login"], line["login_result"]) == ("observe-nobody", "throttled")
    after = scrape(observed)
    throttled = value(after, "metahub_logins_total", result="throttled") - value(before, "metahub_logins_total", result="throttled")
    assert throttled == statuses.count(429) >= 1
