"""Issue 20 in Lambda: the real function binaries write one JSON access line per invocation, with Lambda's request
id, and their metrics as CloudWatch Embedded Metric Format lines in the same log stream."""

from __future__ import annotations

import json
import re

from lambda_harness import LOGIN, MACHINE_TYPE, PASSWORD, SERVICE, basic

import registry_push

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def log_lines(fn) -> list[dict]:
    docs = []
    for text in fn.proc.log_path.read_text(errors="replace").splitlines():
        try:
            docs.append(json.loads(text))
        except ValueError:
            continue
    return docs


def emf(fn, metric: str) -> list[dict]:
    """The EMF lines of `metric`: each names it in its `_aws` directive and carries its value."""
    return [d for d in log_lines(fn) if "_aws" in d and d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == metric]


def test_a_pull_is_one_access_line_and_emf_metrics(registry_fn, token):
    pulls_before = len(emf(registry_fn, "metahub_pulls_total"))
    r = registry_fn.request("GET", "/v2/org/app/manifests/latest",
                            headers={"authorization": f"Bearer {token}", "accept": registry_push.ALL_MANIFEST_TYPES})
    assert r.status == 200, r.body
    access = [d for d in log_lines(registry_fn) if d.get("target") == "metahub::access" and d.get("route") == "manifest"]
    line = access[-1]
    assert UUID.match(line["request_id"]), line
    assert (line["repository"], line["reference"], line["machine_type"]) == ("org/app", "latest", MACHINE_TYPE[0])
    assert line["answer"] == "filtered" and line["digest"] == r.headers["docker-content-digest"] and line["status"] == 200

    pulls = emf(registry_fn, "metahub_pulls_total")
    assert len(pulls) == pulls_before + 1
    pull = pulls[-1]
    directive = pull["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "MetaHub" and directive["Dimensions"] == [["machine_type", "result"]]
    assert (pull["machine_type"], pull["result"], pull["metahub_pulls_total"]) == (MACHINE_TYPE[0], "filtered", 1)
    assert emf(registry_fn, "metahub_upstream_request_duration_seconds"), "upstream latency is recorded too"


def test_a_failed_login_is_logged_and_counted_without_the_password(token_fn):
    r = token_fn.request("GET", "/token", query=f"service={SERVICE}", headers={"authorization": basic(LOGIN, "observe-wrong")})
    assert r.status == 401
    line = [d for d in log_lines(token_fn) if d.get("target") == "metahub::access" and d.get("route") == "token"][-1]
    assert (line["login"], line["login_result"], line["status"]) == (LOGIN, "failed", 401)
    failed = [d for d in emf(token_fn, "metahub_logins_total") if d["result"] == "failed"]
    assert failed and failed[-1]["metahub_logins_total"] == 1
    text = token_fn.proc.log_path.read_text(errors="replace")
    assert "observe-wrong" not in text and PASSWORD not in text
