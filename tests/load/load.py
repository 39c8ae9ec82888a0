"""A bounded load test of metahub on 127.0.0.1: threads of every machine type pull org/app and org/applist by tag,
by digest and their blobs, for DURATION seconds, while the upstream docker-registry is stopped and started again
mid-run. Every manifest answer is checked against the filtered digest that machine type got in a first quiet pass:
no client may ever get another machine type's index. Prints (and writes) a JSON report; exits 1 on a wrong index
or a failure outside the upstream's outage.

    python3 tests/load/load.py [--duration 120] [--threads 12] [--outage 5] [--report FILE]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
import registry_push  # noqa: E402
from conftest import MACHINE_TYPES, Proc, creds, start_configured_metahub, start_registry, stop_all, wait_until  # noqa: E402  (runs without pytest)

REPOS = ["org/app", "org/applist"]
TIMEOUT = 10


def token_for(hub, mt: str) -> str:
    scope = [("scope", f"repository:{r}:pull") for r in REPOS]
    r = requests.get(f"{hub.url}/token", params=[("service", "metahub"), *scope], auth=creds(mt), timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()["token"]


def restart_registry(up, workdir: Path, down_seconds: float) -> tuple[float, float]:
    """Stop the upstream, keep it down, start it again on the same port and storage; (down_at, up_at)."""
    down_at = time.monotonic()
    up.proc.stop()
    time.sleep(down_seconds)
    config = workdir / up.name / "config.yml"
    up.proc = Proc(f"{up.name}-restarted", ["docker-registry", "serve", str(config)], workdir)
    wait_until(lambda: requests.get(f"{up.url}/v2/", timeout=2).status_code == 200, "upstream restarted", proc=up.proc)
    return down_at, time.monotonic()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.by_kind = collections.Counter()
        self.statuses = collections.Counter()
        self.errors: list[dict] = []
        self.wrong_index: list[dict] = []
        self.latencies: list[float] = []

    def record(self, kind: str, status: int, took: float, at: float, error: dict | None = None, wrong: dict | None = None):
        with self.lock:
            self.requests += 1
            self.by_kind[kind] += 1
            self.statuses[f"{kind} {status}"] += 1
            self.latencies.append(took)
            if error:
                self.errors.append({**error, "at": at})
            if wrong:
                self.wrong_index.append(wrong)


def worker(hub, mt: str, expected: dict, blobs: dict, deadline: float, stats: Stats, seed: int, t0: float):
    rnd = random.Random(seed)
    s = requests.Session()
    token = token_for(hub, mt)
    while time.monotonic() < deadline:
        repo = rnd.choice(REPOS)
        kind = rnd.choice(["get-tag", "get-tag", "head-tag", "get-digest", "blob"])
        want = expected[mt][repo]
        if kind == "get-tag":
            method, path = "GET", f"/v2/{repo}/manifests/latest"
        elif kind == "head-tag":
            method, path = "HEAD", f"/v2/{repo}/manifests/latest"
        elif kind == "get-digest":
            method, path = "GET", f"/v2/{repo}/manifests/{want}"
        else:
            method, path = "GET", f"/v2/{repo}/blobs/{rnd.choice(blobs[repo])}"
        start = time.monotonic()
        try:
            r = s.request(method, hub.url + path, headers={"Authorization": f"Bearer {token}", "Accept": registry_push.ALL_MANIFEST_TYPES}, allow_redirects=False, timeout=TIMEOUT)
        except requests.RequestException as e:
            stats.record(kind, 0, time.monotonic() - start, time.monotonic() - t0, error={"kind": kind, "mt": mt, "path": path, "error": repr(e)[:200]})
            continue
        took = time.monotonic() - start
        if r.status_code == 401:  # token expired mid-run: log in again
            token = token_for(hub, mt)
        ok_status = 307 if kind == "blob" else 200
        error = wrong = None
        if r.status_code != ok_status:
            error = {"kind": kind, "mt": mt, "path": path, "status": r.status_code, "body": r.text[:200]}
        elif kind != "blob":
            got = r.headers.get("Docker-Content-Digest")
            body_ok = method == "HEAD" or hashlib.sha256(r.content).hexdigest() == (got or "").removeprefix("sha256:")
            if got != want or not body_ok:
                owner = [m for m, d in expected.items() if d[repo] == got]
                wrong = {"kind": kind, "mt": mt, "repo": repo, "expected": want, "got": got, "body_matches_digest": body_ok, "digest_of": owner}
        # errors are placed in time by when they were answered (a request started before the outage may fail in it)
        stats.record(kind, r.status_code, took, time.monotonic() - t0, error=error, wrong=wrong)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--threads", type=int, default=12)
    ap.add_argument("--outage", type=float, default=5, help="seconds the upstream stays down mid-run")
    ap.add_argument("--report", type=Path, default=None)
    args = ap.parse_args()
    assert args.duration <= 1800, "bounded: at most 30 minutes"

    workdir = Path(tempfile.mkdtemp(prefix="metahub-load-"))
    print(f"work dir and logs: {workdir}", flush=True)
    try:
        up = start_registry(workdir, "upstream")
        images = registry_push.push_test_content(up.url)
        hub = start_configured_metahub(workdir, up, "metahub", ["--upstream-timeout", "2s"])

        # quiet pass: what each machine type is served, and the blobs of every served entry
        expected: dict[str, dict[str, str]] = {}
        blobs: dict[str, set[str]] = {r: set() for r in REPOS}
        for mt in MACHINE_TYPES:
            token = token_for(hub, mt)
            expected[mt] = {}
            for repo in REPOS:
                r = requests.get(f"{hub.url}/v2/{repo}/manifests/latest", headers={"Authorization": f"Bearer {token}", "Accept": registry_push.ALL_MANIFEST_TYPES}, timeout=TIMEOUT)
                r.raise_for_status()
                expected[mt][repo] = r.headers["Docker-Content-Digest"]
                for m in r.json()["manifests"]:
                    table = images.docker_images if repo == "org/applist" else images.images
                    for img in table.values():
                        if img.digest == m["digest"]:
                            blobs[repo].add(registry_push.sha256(img.config))
        distinct = len({d for e in expected.values() for d in e.values()})
        print(f"quiet pass: {len(MACHINE_TYPES)} machine types x {len(REPOS)} repos -> {distinct} distinct filtered indexes", flush=True)

        stats = Stats()
        t0 = time.monotonic()
        deadline = t0 + args.duration
        mts = sorted(MACHINE_TYPES)
        threads = [
            threading.Thread(target=worker, args=(hub, mts[i % len(mts)], expected, {k: sorted(v) for k, v in blobs.items()}, deadline, stats, i, t0), daemon=True)
            for i in range(args.threads)
        ]
        for t in threads:
            t.start()
        time.sleep(args.duration / 2)
        down_at, up_at = restart_registry(up, workdir, args.outage)
        outage = (down_at - t0, up_at - t0 + 3)  # plus the time pooled connections take to recover
        for t in threads:
            t.join(timeout=args.duration + 60)

        stale = hub.log().count("(stale)")
        lat = sorted(stats.latencies) or [0]
        outside = [e for e in stats.errors if not (outage[0] <= e["at"] <= outage[1])]
        report = {
            "duration_s": args.duration,
            "threads": args.threads,
            "machine_types": mts,
            "requests": stats.requests,
            "requests_per_s": round(stats.requests / args.duration, 1),
            "by_kind": dict(stats.by_kind),
            "statuses": dict(sorted(stats.statuses.items())),
            "errors": len(stats.errors),
            "errors_during_outage": len(stats.errors) - len(outside),
            "errors_outside_outage": len(outside),
            "error_samples": (outside or stats.errors)[:5],
            "wrong_index": len(stats.wrong_index),
            "wrong_index_samples": stats.wrong_index[:5],
            "stale_answers_logged": stale,
            "upstream_outage_s": [round(outage[0], 1), round(outage[1], 1)],
            "latency_ms": {"p50": round(lat[len(lat) // 2] * 1000, 1), "p99": round(lat[int(len(lat) * 0.99)] * 1000, 1), "max": round(lat[-1] * 1000, 1)},
        }
        text = json.dumps(report, indent=2)
        print(text)
        if args.report:
            args.report.write_text(text + "\n")
        return 1 if stats.wrong_index or outside else 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
