#!/usr/bin/env python3
"""A pull by tag as the client feels it, through the serverless path and through `metahub serve`, in one run.

The serverless path is tests/serverless's: skopeo -> the edge stand-in of template.yaml's distribution -> Function
URL events -> the real `metahub-token` and `metahub-registry` binaries on tests/lambda's Runtime API stand-in ->
DynamoDB on moto and a `docker-registry` upstream whose blobs 307 to a file server. `metahub serve` uses the same
table and upstream. Every sample is one `skopeo copy docker://HOST/org/app:latest dir:...` (token, manifest by tag,
manifest by digest, config and layer blobs through their 307s), timed from the client's start to its exit.

  cold   serverless: every function instance stopped before the pull, so the token and registry functions both
         start cold (process start, init with its SSM reads, empty caches) - later requests of the same pull reuse
         the instance Lambda would keep; serve: a freshly restarted process (empty caches; its start not counted)
  warm   the same pull again: instances (or the process) already up, caches warm

Warm samples of both paths alternate, so load from elsewhere on the machine hits both alike. Bounded: stops taking
samples after --budget seconds. Everything listens on 127.0.0.1. Writes JSON (--out); --markdown prints the section
bench/report.py puts into docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# The test suites put a recording proxy (the IAM check) between each function and moto: not in a timing.
os.environ.setdefault("METAHUB_IAM_CHECK", "0")
from load_module import load_module  # noqa: E402

CLIENT = "skopeo"
MACHINE_TYPE = "skylake"


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is their maximum)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50_ms": statistics.median(samples) * 1000, "p99_ms": percentile(samples, 99) * 1000,
            "min_ms": min(samples) * 1000, "max_ms": max(samples) * 1000}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"), help="where metahub and the function binaries are")
    ap.add_argument("--cold", type=int, default=10, help="cold pulls per path")
    ap.add_argument("--warm", type=int, default=30, help="warm pulls per path")
    ap.add_argument("--budget", type=float, default=300, help="seconds after which no new sample is started")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench" / "serverless.json"))
    ap.add_argument("--markdown", action="store_true", help="print the docs/bench.md section")
    a = ap.parse_args()

    bin_dir = Path(a.bin_dir).resolve()
    os.environ["METAHUB_BIN"] = str(bin_dir / "metahub")
    os.environ["METAHUB_LAMBDA_BIN_DIR"] = str(bin_dir)
    os.environ.setdefault("RUST_LOG", "warn")
    for tool in (CLIENT, "docker-registry"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing")
    if not (bin_dir / "metahub-registry").is_file():
        sys.exit(f"bench: no function binaries in {bin_dir} (cargo build --release --workspace --bins)")

    # the test harness's components, as tests/serverless starts them
    fixtures = load_module("serverless_conftest", ROOT / "tests" / "serverless" / "conftest.py")
    e2e, harness = fixtures.e2e, fixtures.lambda_harness
    import registry_push

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mh-bench-serverless-"))
    load_before = loadavg()
    try:
        upstream = e2e.start_registry(work, "upstream", redirect=True)
        pushed = registry_push.push_test_content(upstream.url)
        moto = e2e.start_moto(work)
        harness.seed_parameters(f"http://127.0.0.1:{moto.port}")
        hub = e2e.Metahub(port=e2e.free_port(), store="dynamodb:metahub-bench-serverless", upstream=upstream, env=moto.env)
        hub.cli("store", "init")
        features, match = e2e.MACHINE_TYPES[MACHINE_TYPE]
        hub.put_machine_type(MACHINE_TYPE, features, match)
        hub.put_account(*e2e.creds(MACHINE_TYPE), MACHINE_TYPE)
        hub.start(work, "metahub-serve")
        edge = fixtures.start_edge_for(work, moto, upstream, hub.store)
        expected = pushed.images["cpu-" + MACHINE_TYPE].digest
        login = ":".join(e2e.creds(MACHINE_TYPE))
        counter = iter(range(10**6))

        def pull(host: str) -> float:
            dest = work / f"pull-{next(counter)}"
            t0 = time.monotonic()
            e2e.skopeo("copy", "--src-tls-verify=false", "--src-creds", login, f"docker://{host}/org/app:latest", f"dir:{dest}")
            elapsed = time.monotonic() - t0
            manifest = (dest / "manifest.json").read_bytes()
            assert registry_push.sha256(manifest) == expected, "pulled the wrong build"
            shutil.rmtree(dest, ignore_errors=True)
            return elapsed

        def in_budget() -> bool:
            return time.monotonic() - started < a.budget

        samples: dict[str, list[float]] = {k: [] for k in ("serverless_cold", "serverless_warm", "serve_cold", "serve_warm")}
        pull(edge.host)  # the upstream's own caches (filesystem, page cache) warm for both
        pull(hub.host)
        for _ in range(a.cold):
            if not in_budget():
                break
            edge.stop_idle()
            samples["serverless_cold"].append(pull(edge.host))
            hub.stop()
            hub.start(work, "metahub-serve")
            samples["serve_cold"].append(pull(hub.host))
        pull(edge.host)
        served_before = len(edge.log)
        for _ in range(a.warm):
            if not in_budget():
                break
            samples["serverless_warm"].append(pull(edge.host))
            samples["serve_warm"].append(pull(hub.host))
        registry, token = edge.pool("metahub-registry"), edge.pool("metahub-token")
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "client": f"{CLIENT} copy docker://HOST/org/app:latest dir:… as {MACHINE_TYPE}",
            "binaries": str(bin_dir.relative_to(ROOT)) if bin_dir.is_relative_to(ROOT) else str(bin_dir),
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "elapsed_s": time.monotonic() - started,
            "cold_starts": {"registry": registry.cold_starts, "token": token.cold_starts},
            "edge_requests_per_warm_pull": (len(edge.log) - served_before) / max(1, len(samples["serverless_warm"])),
            "command": " ".join(["bench/serverless_pull.py", *sys.argv[1:]]),
            "results": {k: summary(v) for k, v in samples.items()},
        }
    finally:
        for stop in ("edge", "hub"):
            obj = locals().get(stop)
            if obj is not None:
                obj.stop()
        e2e.stop_all()
        harness.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(render(result) if a.markdown else json.dumps(result, indent=2))


def render(r: dict) -> str:
    """The docs/bench.md section (bench/report.py calls this too)."""
    res = r["results"]

    def row(name: str, key: str) -> str:
        s = res.get(key, {})
        if not s.get("n"):
            return f"| {name} | 0 | – | – | – |"
        return f"| {name} | {s['n']} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['min_ms']:.0f}–{s['max_ms']:.0f} |"

    def ratio(a: str, b: str) -> str:
        if res.get(a, {}).get("n") and res.get(b, {}).get("n"):
            return f"{res[a]['p50_ms'] / res[b]['p50_ms']:.2f}"
        return "–"

    return "\n".join([
        "## A pull through the serverless path, as the client feels it",
        "",
        f"`{r['client']}`, timed from the client's start to its exit (its own start-up included), through the edge",
        "stand-in of template.yaml (tests/serverless/edge.py) to the real `metahub-token` and `metahub-registry` binaries",
        "(tests/lambda's Runtime API stand-in; DynamoDB and SSM on moto), and through `metahub serve` on the same table",
        "and upstream, in the same run. **Cold**: every function instance stopped before the pull, so the token and",
        "registry functions both start cold (process start, init with its SSM reads, empty caches); for serve, a",
        "freshly restarted process (its start not counted). **Warm**: the same pull again; serverless and serve",
        "samples alternate. p99 of fewer than 100 samples is their maximum.",
        "",
        "| path | pulls | p50 ms | p99 ms | min–max ms |",
        "|---|---:|---:|---:|---:|",
        row("serverless, cold (token + registry cold)", "serverless_cold"),
        row("`metahub serve`, cold (restarted)", "serve_cold"),
        row("serverless, warm", "serverless_warm"),
        row("`metahub serve`, warm", "serve_warm"),
        "",
        f"p50 ratio serverless / serve: cold {ratio('serverless_cold', 'serve_cold')}, warm {ratio('serverless_warm', 'serve_warm')}.",
        f"Binaries: `{r['binaries']}`. Machine: {r['machine']}, **shared with other work during the run**: load average",
        f"{r['loadavg_before']} before, {r['loadavg_after']} after (1/5/15 min), so absolute figures are inflated and",
        "noisy; the ratios compare neighbouring samples. The serverless figures include the stand-ins' own cost (two",
        f"Python hops per request, the edge (HTTPS, as CloudFront's https-only viewer policy) then the Runtime API, "
        f"{r.get('edge_requests_per_warm_pull', 0):.0f} requests per warm pull; `metahub serve` is plain HTTP) and leave",
        "out what only AWS has: the network legs (viewer -> edge -> Function URL, Lambda's invoke path) and the",
        "download of the function's code on a real cold start.",
        f"Function cold starts in this run: registry {r['cold_starts']['registry']}, token {r['cold_starts']['token']};",
        f"run {r['date']}, {r['elapsed_s']:.0f} s. Command: `{r.get('command', 'bench/serverless_pull.py')}`.",
        "",
    ])


if __name__ == "__main__":
    main()
