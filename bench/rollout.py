#!/usr/bin/env python3
"""A fleet rollout: N nodes of 8 machine types pull one tag pushed a moment before, P at a time (issue 32).

Each node does the whole pull as containerd does it, on a connection of its own: a token (every other node of a
machine type by `POST /token` with the OAuth2 password form, as containerd does, the others by `GET /token` with
Basic, as docker and podman do), HEAD of the tag, GET of the index by the digest the HEAD named, GET of the child
its machine type is served, and GET of one blob, which must answer 307. A pull fails on any other status, a dropped
connection or a timeout (60 s per request).

Targets, one after the other, against one `docker-registry` upstream (blobs 307 to a file server) whose access log
counts what reached it:
  serve      `metahub serve` (file store) with the binary given (`--metahub`, `--serve-env` for its settings)
  registry   the upstream docker-registry serving the same pulls directly (no token; the index is its own)
  lambda     the real `metahub-token` and `metahub-registry` binaries behind the Function URL stand-in of
             tests/serverless (edge.py), at most `--lambda-instances` instances per function (DynamoDB and SSM on
             moto); the CloudFront viewer-request function (it copies Host to X-Forwarded-Host) is not run: it would
             start node for each request.

Reported per target: failed pulls, p50/p99 per step, pulls/s, and upstream requests: HEADs of the tag, GETs per
manifest (most and mean over the digests fetched), blob GETs. Everything listens on 127.0.0.1; every wait is
bounded. Writes JSON (`--out`) and, with `--markdown`, the table for docs/bench.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from load_module import load_module  # noqa: E402

REPO = "org/app"
# The nodes' machine types: the e2e suite's (tests/e2e/conftest.py's MACHINE_TYPES, added by main() once the harness
# is loaded) and these two more.
MORE_MACHINE_TYPES: dict[str, tuple[list[str], str]] = {
    "icelake": (["cpu:icelake"], "best"),
    "haswell": (["cpu:haswell"], "best"),
}
MACHINE_TYPES: dict[str, tuple[list[str], str]] = {}
ACCEPT = ",".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
])
TIMEOUT = 60
SERVICE = {"name": "metahub"}  # the token service; the Lambda harness deploys another
STEPS = ["token", "head_tag", "index", "child", "blob"]


def log(msg: str) -> None:
    print(f"[rollout {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def creds(machine_type: str) -> tuple[str, str]:
    return f"node-{machine_type}", f"pw-{machine_type}-rollout"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------ the upstream

ACCESS_LINE = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def start_upstream(e2e, work: Path):
    """docker-registry with its access log on (what counts upstream requests); blobs 307 to a file server."""
    d = work / "upstream"
    root = d / "data"
    root.mkdir(parents=True)
    port = e2e.free_port()
    storage = e2e.start_static_server(root)
    config = d / "config.yml"
    config.write_text("\n".join([
        "version: 0.1",
        "log: {level: warn, accesslog: {disabled: false}}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root}}}",
        f"http: {{addr: '127.0.0.1:{port}', secret: rollout-secret}}",
        "middleware:",
        "  storage:",
        f"    - {{name: redirect, options: {{baseurl: '{storage.url}'}}}}",
    ]) + "\n")
    proc = e2e.Proc("upstream", ["docker-registry", "serve", str(config)], work)
    up = e2e.Upstream(name="upstream", port=port, root=root, proc=proc, storage=storage)
    e2e.wait_until(lambda: requests.get(f"{up.url}/v2/", timeout=2).status_code == 200, "upstream /v2/", proc=proc)
    return up


def upstream_log(work: Path) -> Path:
    return work / "upstream.log"


def access_lines(path: Path) -> list[tuple[str, str, int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = ACCESS_LINE.search(line)
        if m and m.group(2).startswith("/v2/"):
            out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def upstream_counts(lines: list[tuple[str, str, int]], tag: str) -> dict:
    heads = sum(1 for m, p, _ in lines if m == "HEAD" and p.endswith(f"/manifests/{tag}"))
    tag_gets = sum(1 for m, p, _ in lines if m == "GET" and p.endswith(f"/manifests/{tag}"))
    by_digest = Counter(p for m, p, _ in lines if m == "GET" and "/manifests/sha256:" in p)
    return {
        "tag_heads": heads,
        "tag_gets": tag_gets,
        "manifests_fetched": len(by_digest),
        "gets_per_manifest_max": max(by_digest.values(), default=0),
        "gets_per_manifest_mean": round(statistics.mean(by_digest.values()), 2) if by_digest else 0,
        "blob_gets": sum(1 for m, p, _ in lines if "/blobs/" in p),
        "total": len(lines),
    }


# ------------------------------------------------------------------------------------------------ one node


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.steps: dict[str, list[float]] = {s: [] for s in STEPS}
        self.failed = 0
        self.failures: Counter = Counter()

    def add(self, times: dict[str, float], failure: str | None) -> None:
        with self.lock:
            for step, t in times.items():
                self.steps[step].append(t)
            if failure:
                self.failed += 1
                self.failures[failure] += 1


def pull(base: str, node: int, tag: str, with_token: bool, results: Results, verify: str | bool = True) -> None:
    """One node's pull; the timing of each step that answered as it should, and what failed first."""
    machine_type = list(MACHINE_TYPES)[node % len(MACHINE_TYPES)]
    login, password = creds(machine_type)
    times: dict[str, float] = {}
    s = requests.Session()
    step = "token"

    def timed(name: str, method: str, url: str, expect: int, **kw) -> requests.Response:
        nonlocal step
        step = name
        t0 = time.perf_counter()
        r = s.request(method, url, timeout=TIMEOUT, allow_redirects=False, verify=verify, **kw)
        if r.status_code != expect:
            raise RuntimeError(f"{name}: {r.status_code} {r.text[:80].strip()}")
        times[name] = time.perf_counter() - t0
        return r

    try:
        headers = {"Accept": ACCEPT}
        if with_token:
            scope = f"repository:{REPO}:pull"
            if (node // len(MACHINE_TYPES)) % 2:
                form = {"grant_type": "password", "username": login, "password": password, "service": SERVICE["name"],
                        "scope": scope, "client_id": "containerd-client"}
                r = timed("token", "POST", f"{base}/token", 200, data=form)
            else:
                r = timed("token", "GET", f"{base}/token", 200, params={"service": SERVICE["name"], "scope": scope},
                          auth=(login, password))
            body = r.json()
            headers["Authorization"] = f"Bearer {body.get('token') or body['access_token']}"
        r = timed("head_tag", "HEAD", f"{base}/v2/{REPO}/manifests/{tag}", 200, headers=headers)
        digest = r.headers["Docker-Content-Digest"]
        r = timed("index", "GET", f"{base}/v2/{REPO}/manifests/{digest}", 200, headers=headers)
        entries = r.json()["manifests"]
        child = next((e for e in entries if e.get("platform", {}).get("architecture") == "amd64"), entries[0])
        r = timed("child", "GET", f"{base}/v2/{REPO}/manifests/{child['digest']}", 200, headers=headers)
        layer = r.json()["layers"][0]["digest"]
        timed("blob", "GET", f"{base}/v2/{REPO}/blobs/{layer}", 307, headers={"Authorization": headers.get("Authorization", "")})
        results.add(times, None)
    except Exception as e:  # noqa: BLE001 - every way a pull can fail is counted
        kind = str(e) if isinstance(e, RuntimeError) else f"{step}: {type(e).__name__} {str(e)[-160:]}"
        results.add(times, kind[:240])
    finally:
        s.close()


def rollout(base: str, tag: str, nodes: int, parallel: int, with_token: bool, verify: str | bool = True) -> dict:
    results = Results()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for f in [pool.submit(pull, base, i, tag, with_token, results, verify) for i in range(nodes)]:
            f.result()
    elapsed = time.monotonic() - t0
    steps = {}
    for step, samples in results.steps.items():
        if samples:
            steps[step] = {"n": len(samples), "p50_ms": round(statistics.median(samples) * 1000, 1),
                           "p99_ms": round(percentile(samples, 99) * 1000, 1)}
    return {"nodes": nodes, "parallel": parallel, "failed": results.failed,
            "failures": dict(results.failures.most_common(5)), "elapsed_s": round(elapsed, 1),
            "pulls_per_s": round(nodes / elapsed, 1), "steps": steps}


# ------------------------------------------------------------------------------------------------ targets


def push_new_tag(registry_push, upstream_url: str, pushed, tag: str) -> str:
    """org/app's index again under a new tag, with a note: a digest nothing has seen (pushed 'a moment before')."""
    doc = json.loads(pushed.tags[REPO][0])
    doc.setdefault("annotations", {})["rollout.tag"] = tag
    body = registry_push.canonical(doc)
    return registry_push.Registry(upstream_url).push_manifest(REPO, tag, body, pushed.tags[REPO][1])


def measured(work: Path, tag: str, run) -> dict:
    time.sleep(0.5)  # lines of earlier requests are written after their answers
    mark = len(access_lines(upstream_log(work)))
    load_before = loadavg()
    result = run()
    time.sleep(1.0)
    result["upstream"] = upstream_counts(access_lines(upstream_log(work))[mark:], tag)
    result["loadavg_before"], result["loadavg_after"] = load_before, loadavg()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=200)
    ap.add_argument("--targets", default="serve,registry,lambda", help="comma-separated: serve, registry, lambda")
    ap.add_argument("--metahub", default=str(ROOT / "target" / "release" / "metahub"))
    ap.add_argument("--label", default="", help="names this run in the output (e.g. before, after)")
    ap.add_argument("--serve-env", action="append", default=[], help="NAME=VALUE for metahub serve (repeatable)")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "debug"), help="where the Lambda binaries are")
    ap.add_argument("--lambda-instances", type=int, default=8, help="instances per function at most")
    ap.add_argument("--lambda-nodes", type=int, default=0, help="nodes for the lambda target (default: --nodes)")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench" / "rollout.json"))
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    targets = [t for t in a.targets.split(",") if t]

    metahub = str(Path(a.metahub).resolve())
    os.environ["METAHUB_BIN"] = metahub
    os.environ["METAHUB_LAMBDA_BIN_DIR"] = str(Path(a.bin_dir).resolve())
    os.environ["RUST_LOG"] = "warn"
    fixtures = load_module("serverless_conftest", ROOT / "tests" / "serverless" / "conftest.py")
    e2e, harness, edge_mod = fixtures.e2e, fixtures.lambda_harness, fixtures.edge_mod
    e2e.METAHUB_BIN = metahub
    MACHINE_TYPES.update(e2e.MACHINE_TYPES, **MORE_MACHINE_TYPES)
    import registry_push

    work = Path(tempfile.mkdtemp(prefix="mh-rollout-"))
    log(f"work dir {work}; load {loadavg()}")
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "label": a.label,
                 "machine": f"{os.cpu_count()} CPUs, {platform.machine()}", "metahub": metahub,
                 "serve_env": a.serve_env, "command": " ".join(["bench/rollout.py", *sys.argv[1:]]), "targets": {}}
    hub = edge = None
    try:
        upstream = start_upstream(e2e, work)
        pushed = registry_push.push_test_content(upstream.url)

        if "serve" in targets:
            hub = e2e.Metahub(port=e2e.free_port(), store=f"file:{work / 'serve' / 'store.redb'}", upstream=upstream,
                              env={"RUST_LOG": "warn", **dict(kv.split("=", 1) for kv in a.serve_env)})
            (work / "serve").mkdir()
            for mt, (features, match) in MACHINE_TYPES.items():
                hub.put_machine_type(mt, features, match)
                hub.put_account(*creds(mt), mt)
            hub.start(work, "metahub-serve")
            tag = f"rollout-serve-{int(time.time())}"
            push_new_tag(registry_push, upstream.url, pushed, tag)
            log(f"serve: {a.nodes} nodes, {a.parallel} at a time, tag {tag}")
            out["targets"]["serve"] = measured(work, tag, lambda: rollout(hub.url, tag, a.nodes, a.parallel, True))
            log(json.dumps(out["targets"]["serve"]))
            hub.stop()
            hub = None

        if "registry" in targets:
            tag = f"rollout-direct-{int(time.time())}"
            push_new_tag(registry_push, upstream.url, pushed, tag)
            log(f"registry: {a.nodes} nodes, {a.parallel} at a time, tag {tag}")
            out["targets"]["registry"] = measured(work, tag, lambda: rollout(upstream.url, tag, a.nodes, a.parallel, False))
            log(json.dumps(out["targets"]["registry"]))

        if "lambda" in targets:
            moto = e2e.start_moto(work)
            harness.seed_parameters(f"http://127.0.0.1:{moto.port}")
            table = "dynamodb:metahub-rollout"
            admin = e2e.Metahub(port=e2e.free_port(), store=table, upstream=upstream, env=moto.env)
            admin.cli("store", "init")
            for mt, (features, match) in MACHINE_TYPES.items():
                admin.put_machine_type(mt, features, match)
                admin.put_account(*creds(mt), mt)
            # the edge of tests/serverless without its node-run viewer function (see the docstring)
            real_read = edge_mod.read_distribution

            def without_viewer_function(*args, **kw):
                d = real_read(*args, **kw)
                for b in d.behaviours:
                    b.viewer_request = None
                return d

            edge_mod.read_distribution = without_viewer_function
            edge = fixtures.start_edge_for(work, moto, upstream, table)
            for pool in {id(p): p for p in edge.pools.values()}.values():
                pool.max_instances = a.lambda_instances
            nodes = a.lambda_nodes or a.nodes
            SERVICE["name"] = harness.SERVICE
            tag = f"rollout-lambda-{int(time.time())}"
            push_new_tag(registry_push, upstream.url, pushed, tag)
            log(f"lambda: {nodes} nodes, {a.parallel} at a time, at most {a.lambda_instances} instances per function")
            result = measured(work, tag, lambda: rollout(edge.url, tag, nodes, a.parallel, True, str(edge.ca_file)))
            result["instances"] = {b: edge.pool(b).cold_starts for b in ("metahub-token", "metahub-registry")}
            out["targets"]["lambda"] = result
            log(json.dumps(result))
    finally:
        for obj in (edge, hub):
            if obj is not None:
                obj.stop()
        e2e.stop_all()
        harness.stop_all()

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(render([out]) if a.markdown else json.dumps(out, indent=2))
    return 0


def render(runs: list[dict]) -> str:
    """One table row per (run, target): failed pulls, p50/p99 per step, upstream calls."""
    head = ("| run | target | nodes / at once | failed | " + " | ".join(f"{s} p50 / p99 ms" for s in STEPS)
            + " | pulls/s | upstream tag HEADs | GETs per manifest (max) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        for name, t in run["targets"].items():
            steps = " | ".join(
                f"{t['steps'][s]['p50_ms']:.0f} / {t['steps'][s]['p99_ms']:.0f}" if s in t["steps"] else "-" for s in STEPS)
            up = t["upstream"]
            lines.append(f"| {run['label']} | {name} | {t['nodes']} / {t['parallel']} | {t['failed']} | {steps} | "
                         f"{t['pulls_per_s']} | {up['tag_heads']} | {up['gets_per_manifest_max']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
