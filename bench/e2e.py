#!/usr/bin/env python3
"""End-to-end benchmark of `metahub serve` against its `docker-registry` upstream, on 127.0.0.1 only.

What it measures (see docs/bench.md for the figures and bench/run.sh for the whole run):
  * wrk: requests/s and p50/p99 of manifest GET/HEAD by tag, GET by digest and blob 307s, through metahub and
    straight to the upstream, interleaved in the same run (the ratio compares neighbours, not runs minutes apart);
    with the embedded store and with DynamoDB (moto), and separately with `--tag-ttl 10s`;
  * upstream requests per client pull (cold, warm by tag, warm by digest), counted in the upstream's access log;
  * cold start of each Lambda binary against a minimal Runtime API stand-in; binary and zip sizes; peak RSS.

Every process it starts listens on 127.0.0.1, is in its own process group and is stopped on exit. Every wait and
every wrk run is bounded in time. Results go to a JSON file; `--markdown` renders it (docs/bench.md).
"""

from __future__ import annotations

import argparse
import base64
import atexit
import datetime as dt
import functools
import http.server
import json
import os
import platform
import re
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import registry_push  # noqa: E402  (the e2e harness's deterministic test content)

REPO = "org/app"
MACHINE_TYPE = ("cascadelake-a100", ["cpu:cascadelake", "nvcap:8.6"])
LOGIN, PASSWORD = "bench", "bench-password-123"
ACCEPT_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_ALL = registry_push.ALL_MANIFEST_TYPES
START_TIMEOUT = 30
ORIGIN_SECRET = "bench-origin-secret-0123456789"
SSM_PARAMS = {"/metahub/bench/signing-key": None, "/metahub/bench/origin-secret": ORIGIN_SECRET,
              "/metahub/bench/upstream-credentials": "bench-user:bench-pass"}
CMD_TIMEOUT = 120

# ------------------------------------------------------------------------------------------------ processes

_PROCS: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, cmd: list[str], workdir: Path, env: dict | None = None) -> subprocess.Popen:
    out = open(workdir / f"{name}.log", "ab")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    p.log_path = workdir / f"{name}.log"  # type: ignore[attr-defined]
    _PROCS.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def stop_all() -> None:
    for p in reversed(_PROCS):
        try:
            stop(p)
        except Exception as e:  # noqa: BLE001 - one stubborn process must not keep the others alive
            print(f"stopping pid {p.pid}: {e!r}", file=sys.stderr)


atexit.register(stop_all)


def wait_until(check, what: str, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited {proc.returncode}; log {proc.log_path}")  # type: ignore[attr-defined]
        try:
            r = check()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - not yet
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what} (last: {last!r})")


def run(cmd: list[str], input: bytes | None = None, env: dict | None = None, timeout: float = CMD_TIMEOUT) -> str:
    p = subprocess.run(cmd, input=input, capture_output=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{p.stdout.decode(errors='replace')}\n{p.stderr.decode(errors='replace')}")
    return p.stdout.decode(errors="replace")


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the peak resident set of a live process (what `/usr/bin/time -v` reports at exit)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------ upstream

class StorageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def start_storage(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """The blob storage the upstream redirects to (stands in for S3 behind Docker Hub)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(StorageHandler, directory=str(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def start_registry(workdir: Path, name: str, root: Path, storage_url: str, access_log: bool) -> tuple[subprocess.Popen, str]:
    """docker-registry on the shared storage root; blobs 307 to the storage server, as Docker Hub's do.
    The throughput upstream logs warnings only (as quiet as metahub runs); the counting one logs every request."""
    port = free_port()
    level = "info" if access_log else "warn"
    config = workdir / f"{name}.yml"
    config.write_text("\n".join([
        "version: 0.1",
        f"log: {{level: {level}, accesslog: {{disabled: {str(not access_log).lower()}}}}}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root}}}",
        f"http: {{addr: '127.0.0.1:{port}', secret: bench-secret}}",
        "middleware:",
        "  storage:",
        f"    - {{name: redirect, options: {{baseurl: '{storage_url}'}}}}",
    ]) + "\n")
    proc = start(name, ["docker-registry", "serve", str(config)], workdir)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/v2/", timeout=2).status_code == 200, f"{name} /v2/", proc)
    return proc, url


ACCESS_LINE = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def access_lines(log_path: Path) -> list[tuple[str, str, int]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = ACCESS_LINE.search(line)
        if m and m.group(2).startswith("/v2/"):
            out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def classify(lines: list[tuple[str, str, int]]) -> dict[str, int]:
    counts = {"manifest HEAD": 0, "manifest GET": 0, "blob GET/HEAD": 0, "other": 0}
    for method, path, _ in lines:
        if "/manifests/" in path:
            counts[f"manifest {method}" if method in ("GET", "HEAD") else "other"] += 1
        elif "/blobs/" in path:
            counts["blob GET/HEAD"] += 1
        else:
            counts["other"] += 1
    counts["total"] = sum(counts.values())
    return counts


class Counter:
    """Upstream requests between two marks, read from the counting upstream's access log."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.mark = 0

    def start(self) -> None:
        time.sleep(0.3)  # lines of earlier requests are written after their responses
        self.mark = len(access_lines(self.log_path))

    def stop(self) -> dict[str, int]:
        time.sleep(0.3)
        return classify(access_lines(self.log_path)[self.mark:])


# ------------------------------------------------------------------------------------------------ metahub

class Metahub:
    def __init__(self, binary: str, workdir: Path, name: str, store: str, upstream: str, env: dict | None = None,
                 extra: list[str] | None = None):
        self.binary, self.workdir, self.name, self.store, self.upstream = binary, workdir, name, store, upstream
        self.env = {"RUST_LOG": "warn", **(env or {})}
        self.extra = extra or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, input: bytes | None = None) -> str:
        return run([self.binary, *args, "--store", self.store], input=input, env=self.env)

    def provision(self) -> None:
        name, features = MACHINE_TYPE
        args = ["machine-type", "put", name]
        for f in features:
            args += ["--feature", f]
        self.cli(*args)
        self.cli("account", "put", LOGIN, "--machine-type", name, "--password-stdin", input=PASSWORD.encode())

    def start(self) -> None:
        cmd = [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--public-url", self.url,
               "--upstream", self.upstream, "--store", self.store, "--token-ttl", "1h", *self.extra]
        self.proc = start(self.name, cmd, self.workdir, env=self.env)
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=2).status_code == 401, f"{self.name} /v2/", self.proc)

    def token(self) -> str:
        r = requests.get(f"{self.url}/token", params={"service": "metahub", "scope": f"repository:{REPO}:pull"},
                         auth=(LOGIN, PASSWORD), timeout=10)
        r.raise_for_status()
        return r.json()["token"]


# ------------------------------------------------------------------------------------------------ wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNIT[m.group(2)]


def shown(args: list[str]) -> str:
    """A command line for the report, without the bearer token."""
    return re.sub(r"Bearer [^'\s]+", "Bearer <token>", " ".join(a if " " not in a else repr(a) for a in args))


def wrk(url: str, seconds: int, threads: int, connections: int, headers: dict[str, str], method: str, workdir: Path) -> dict:
    """GET load with wrk; HEAD load with ab (wrk 4.1 waits for a body after a HEAD answer and stalls)."""
    if method == "HEAD":
        return ab_head(url, seconds, connections, headers, workdir)
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = run(args + [url], timeout=seconds + 30)
    result = {"tool": "wrk", "cmd": shown(args + [url])}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = parse_duration_ms(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["bad"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = m.group(1).strip() if m else ""
    return result


def ab_head(url: str, seconds: int, connections: int, headers: dict[str, str], workdir: Path) -> dict:
    """`ab -i` (HEAD) with keep-alive; percentiles from its CSV (floats, unlike its summary)."""
    csv = workdir / "ab-percentiles.csv"
    args = ["ab", "-i", "-k", "-q", "-c", str(connections), "-t", str(seconds), "-n", "10000000", "-e", str(csv)]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = run(args + [url], timeout=seconds + 30)
    result = {"tool": "ab", "cmd": shown(args + [url])}
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Complete requests:\s+(\d+)", out)
    result["requests"] = int(m.group(1)) if m else 0
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    result["bad"] = (int(failed.group(1)) if failed else 0) + (int(non2xx.group(1)) if non2xx else 0)
    result["socket_errors"] = ""
    pct = {}
    for line in csv.read_text().splitlines()[1:]:
        p, v = line.split(",")
        pct[int(float(p))] = float(v)
    result["p50_ms"], result["p99_ms"] = pct.get(50), pct.get(99)
    return result


# ------------------------------------------------------------------------------------------------ client pulls

def skopeo_pull(ref: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"{LOGIN}:{PASSWORD}", f"docker://{ref}", f"dir:{dest}"])


def containerd_style_pull(hub: Metahub, reference: str) -> str:
    """What containerd does: HEAD the reference, trust Docker-Content-Digest, GET by that digest, then the
    linux/amd64 child manifest and its blobs (following the 307s). Returns the index digest."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {hub.token()}"
    s.headers["Accept"] = ACCEPT_ALL
    base = f"{hub.url}/v2/{REPO}"
    head = s.head(f"{base}/manifests/{reference}", timeout=10)
    head.raise_for_status()
    digest = head.headers["Docker-Content-Digest"]
    index = s.get(f"{base}/manifests/{digest}", timeout=10)
    index.raise_for_status()
    child = next(m["digest"] for m in index.json()["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
    manifest = s.get(f"{base}/manifests/{child}", timeout=10)
    manifest.raise_for_status()
    body = manifest.json()
    for blob in [body["config"], *body["layers"]]:
        r = s.get(f"{base}/blobs/{blob['digest']}", timeout=10, allow_redirects=False)
        assert r.status_code == 307, r.status_code
        requests.get(r.headers["Location"], timeout=10).raise_for_status()
    return digest


def count_pulls(hub: Metahub, counter: Counter, workdir: Path) -> dict:
    """Upstream requests per client pull, cold then warm, for skopeo (GET by tag) and a containerd-style client."""
    out: dict[str, dict] = {}
    host = f"127.0.0.1:{hub.port}"
    phases = [
        ("skopeo, cold by tag", lambda d: skopeo_pull(f"{host}/{REPO}:latest", d)),
        ("skopeo, warm by tag", lambda d: skopeo_pull(f"{host}/{REPO}:latest", d)),
    ]
    for label, action in phases:
        counter.start()
        action(workdir / f"pull-{len(out)}")
        out[label] = counter.stop()
    filtered = requests.head(f"{hub.url}/v2/{REPO}/manifests/latest", timeout=10,
                             headers={"Authorization": f"Bearer {hub.token()}", "Accept": ACCEPT_ALL}).headers["Docker-Content-Digest"]
    counter.start()
    skopeo_pull(f"{host}/{REPO}@{filtered}", workdir / "pull-digest")
    out["skopeo, warm by digest"] = counter.stop()
    counter.start()
    containerd_style_pull(hub, "latest")
    out["containerd-style (HEAD tag, GET by digest), warm"] = counter.stop()
    counter.start()
    containerd_style_pull(hub, filtered)
    out["containerd-style by digest, warm"] = counter.stop()
    return out


def heads_under_load(hub: Metahub, counter: Counter, seconds: int, threads: int, conns: int, workdir: Path) -> dict:
    """Upstream HEADs per metahub tag GET while wrk hammers one tag: what single-flight saves."""
    headers = {"Authorization": f"Bearer {hub.token()}", "Accept": ACCEPT_INDEX}
    counter.start()
    r = wrk(f"{hub.url}/v2/{REPO}/manifests/latest", seconds, threads, conns, headers, "GET", workdir)
    c = counter.stop()
    return {"requests": r["requests"], "upstream": c, "heads_per_request": c["manifest HEAD"] / max(r["requests"], 1)}


# ------------------------------------------------------------------------------------------------ throughput

def scenarios(hub: Metahub, upstream: str, pushed: registry_push.Pushed) -> list[dict]:
    """(label, metahub URL, upstream URL, method, accept) for each request kind."""
    filtered = requests.get(f"{hub.url}/v2/{REPO}/manifests/latest", timeout=10,
                            headers={"Authorization": f"Bearer {hub.token()}", "Accept": ACCEPT_ALL})
    filtered.raise_for_status()
    index_digest = pushed.tags[REPO][2]
    layer = registry_push.sha256(pushed.images["cpu-skylake"].layer)
    return [
        {"kind": "GET manifest by tag", "method": "GET", "path": "manifests/latest", "up_path": "manifests/latest"},
        {"kind": "HEAD manifest by tag", "method": "HEAD", "path": "manifests/latest", "up_path": "manifests/latest"},
        {"kind": "GET manifest by digest", "method": "GET", "path": f"manifests/{filtered.headers['Docker-Content-Digest']}",
         "up_path": f"manifests/{index_digest}"},
        {"kind": "GET blob (307)", "method": "GET", "path": f"blobs/{layer}", "up_path": f"blobs/{layer}"},
    ]


def throughput(hub: Metahub, upstream: str, pushed, args, workdir: Path, only: list[str] | None = None) -> list[dict]:
    rows = []
    token = hub.token()
    for sc in scenarios(hub, upstream, pushed):
        if only and sc["kind"] not in only:
            continue
        accept = {"Accept": ACCEPT_INDEX} if "manifest" in sc["kind"] else {}
        log(f"  wrk {sc['kind']}: upstream, then metahub ({hub.name}); load {load()}")
        up = wrk(f"{upstream}/v2/{REPO}/{sc['up_path']}", args.seconds, args.threads, args.connections, accept, sc["method"], workdir)
        mh = wrk(f"{hub.url}/v2/{REPO}/{sc['path']}", args.seconds, args.threads, args.connections,
                 {"Authorization": f"Bearer {token}", **accept}, sc["method"], workdir)
        rows.append({"kind": sc["kind"], "upstream": up, "metahub": mh, "ratio": mh["rps"] / up["rps"] if up["rps"] else None,
                     "load": load()})
    return rows


# ------------------------------------------------------------------------------------------------ Lambda

def http_event(method: str, path: str, headers: dict[str, str], query: str = "", iam_caller: str | None = None) -> dict:
    """A Lambda function URL event (payload 2.0), as CloudFront forwards it (with the origin secret header); with
    `iam_caller`, as Lambda passes a SigV4-signed request to an AWS_IAM Function URL (the admin function)."""
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": {"host": "bench.lambda-url.us-east-1.on.aws", "user-agent": "bench", "x-origin-verify": ORIGIN_SECRET, **headers},
        "requestContext": {"accountId": "anonymous", "apiId": "bench", "domainName": "bench.lambda-url.us-east-1.on.aws",
                           "domainPrefix": "bench",
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "bench"},
                           "requestId": "bench", "routeKey": "$default", "stage": "$default",
                           "time": "01/Jan/2026:00:00:00 +0000", "timeEpoch": 0},
        "isBase64Encoded": False,
    }
    if iam_caller:
        event["requestContext"]["authorizer"] = {"iam": {"accountId": "123456789012", "callerId": "AROAEXAMPLE:bench",
                                                         "userArn": iam_caller, "userId": "AROAEXAMPLE:bench"}}
    return event


def lambda_binary(name: str, release_dir: Path) -> Path | None:
    for candidate in (ROOT / "target" / "lambda" / name / "bootstrap", release_dir / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def cold_start(binary: Path, env: dict, events: list[tuple], workdir: Path, name: str) -> dict:
    """Start `binary` against the Runtime API stand-in of tests/lambda with its first event already queued (as Lambda
    does on a cold invoke); time process start -> first `next` poll (init) and -> first response."""
    sys.path.insert(0, str(ROOT / "tests" / "lambda"))
    from runtime_api import start_runtime_api  # the Lambda helper's stand-in, shared with tests/lambda

    api = start_runtime_api()
    lambda_env = {
        "AWS_LAMBDA_RUNTIME_API": api.address, "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench", "RUST_LOG": "warn", **env,
    }
    ids = [api.submit(http_event(*e)) for e in events[:1]]
    # The machine's own start-up cost right now: this VM starts any process several times slower after an idle
    # second than back to back (docs/bench.md), so each init is reported beside this floor.
    f0 = time.monotonic()
    subprocess.run(["/bin/true"], check=False)
    floor_ms = (time.monotonic() - f0) * 1000
    t0 = time.monotonic()
    proc = start(f"lambda-{name}", [str(binary)], workdir, env=lambda_env)
    try:
        results = []
        for i, event in enumerate(events):
            method, path = event[0], event[1]
            sent = time.monotonic()
            outcome = api.wait(ids[0], timeout=30) if i == 0 else api.invoke(http_event(*event), timeout=30)
            try:
                payload = outcome.json()
            except ValueError:
                payload = {"body": outcome.body.decode(errors="replace")}
            results.append({"request": f"{method} {path}", "status": payload.get("statusCode", outcome.kind),
                            "ms": (outcome.posted_at - (t0 if i == 0 else sent)) * 1000,
                            "since_start_ms": (outcome.posted_at - t0) * 1000, "body": payload.get("body") or ""})
        init_ms = ((api.first_poll or t0) - t0) * 1000
        rss = peak_rss_kib(proc.pid)
        return {"binary": str(binary.relative_to(ROOT)) if binary.is_relative_to(ROOT) else str(binary), "init_ms": init_ms,
                "floor_ms": floor_ms, "first_answer_ms": results[0]["since_start_ms"], "invocations": results, "peak_rss_kib": rss}
    finally:
        stop(proc)
        api.stop()


def cold_starts(binary: Path, env: dict, events: list[tuple], workdir: Path, name: str, runs: int) -> dict:
    """`runs` cold starts of `binary`: the first run's invocations, and the median init and first answer of all runs
    (each run is a fresh process; the shared 2-core machine makes single runs noisy)."""
    results = [cold_start(binary, env, events, workdir, name) for _ in range(runs)]
    first = results[0]
    for key in ("init_ms", "first_answer_ms", "floor_ms"):
        values = sorted(r[key] for r in results)
        first[key] = statistics.median(values)
        first[key.replace("_ms", "_range_ms")] = [values[0], values[-1]]
    first["runs"] = len(results)
    first["peak_rss_kib"] = max((r["peak_rss_kib"] or 0) for r in results) or None
    return first


def cold_pull(registry_bin: Path, token_bin: Path, env: dict, basic: str, workdir: Path) -> dict:
    """One `docker pull` by tag as the client sees it, both functions cold (fresh processes, first event queued before
    each starts, as on a cold invoke): registry GET /v2/ (401, cold), token GET /token (cold), then the registry (now
    warm) GET the index by tag, GET the child manifest the client picks, and the config and layer blobs (307).
    Each step is timed from the moment the client would send it to the function's answer; total = their sum."""
    sys.path.insert(0, str(ROOT / "tests" / "lambda"))
    from runtime_api import start_runtime_api

    steps: list[dict] = []
    procs: list[subprocess.Popen] = []
    apis = []

    def lambda_env(api, name: str) -> dict:
        return {"AWS_LAMBDA_RUNTIME_API": api.address, "AWS_LAMBDA_FUNCTION_NAME": name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}", "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
                "RUST_LOG": "warn", **env}

    def cold(binary: Path, name: str, event: dict) -> tuple:
        api = start_runtime_api()
        apis.append(api)
        request_id = api.submit(event)
        t0 = time.monotonic()
        procs.append(start(f"pull-{name}", [str(binary)], workdir, env=lambda_env(api, name)))
        outcome = api.wait(request_id, timeout=30)
        return api, outcome, (outcome.posted_at - t0) * 1000, ((api.first_poll or t0) - t0) * 1000

    def step(what: str, outcome, ms: float, init_ms: float | None = None) -> dict:
        payload = outcome.json()
        row = {"step": what, "status": payload.get("statusCode"), "ms": ms}
        if init_ms is not None:
            row["init_ms"] = init_ms
        steps.append(row)
        return payload

    def warm(api, what: str, path: str, headers: dict) -> dict:
        sent = time.monotonic()
        outcome = api.invoke(http_event("GET", path, headers), timeout=30)
        return step(what, outcome, (outcome.posted_at - sent) * 1000)

    try:
        registry, outcome, ms, init = cold(registry_bin, "metahub-registry", http_event("GET", "/v2/", {}))
        step("registry GET /v2/ (cold) → 401", outcome, ms, init)
        scope = f"service=metahub&scope=repository:{REPO}:pull"
        _, outcome, ms, init = cold(token_bin, "metahub-token", http_event("GET", "/token", {"authorization": basic}, scope))
        payload = step("token GET /token (cold)", outcome, ms, init)
        auth = {"authorization": f"Bearer {json.loads(payload.get('body') or '{}').get('token', '')}"}
        index = warm(registry, f"registry GET /v2/{REPO}/manifests/latest (warm)", f"/v2/{REPO}/manifests/latest",
                     {**auth, "accept": ", ".join(ACCEPT_ALL)})
        entries = json.loads(index.get("body") or "{}").get("manifests") or []
        amd64 = [m for m in entries if (m.get("platform") or {}).get("architecture") == "amd64"] or entries
        if amd64:
            child = amd64[0]["digest"]
            manifest = warm(registry, "registry GET child manifest by digest", f"/v2/{REPO}/manifests/{child}",
                            {**auth, "accept": ", ".join(ACCEPT_ALL)})
            image = json.loads(manifest.get("body") or "{}")
            for blob in [image.get("config", {}), *image.get("layers", [])][:2]:
                if blob.get("digest"):
                    warm(registry, "registry GET blob (307)", f"/v2/{REPO}/blobs/{blob['digest']}", auth)
    finally:
        for proc in procs:
            stop(proc)
        for api in apis:
            api.stop()
    return {"steps": steps, "total_ms": sum(s["ms"] for s in steps)}


def short_bodies(result: dict) -> dict:
    for inv in result["invocations"]:
        inv["body"] = inv["body"][:200]
    return result


def sizes(release_dir: Path, workdir: Path) -> list[dict]:
    rows = []
    for name in ("metahub", "metahub-registry", "metahub-token", "metahub-admin"):
        binary = lambda_binary(name, release_dir) if name != "metahub" else release_dir / name
        if not binary or not binary.is_file():
            rows.append({"name": name, "missing": True})
            continue
        z = workdir / f"{name}.zip"
        # `zip -9` of a copy named bootstrap, as the provided.al2023 runtime wants it
        d = workdir / f"zip-{name}"
        d.mkdir(exist_ok=True)
        shutil.copy(binary, d / "bootstrap")
        run(["zip", "-9", "-q", "-j", str(z), str(d / "bootstrap")], timeout=600)
        rows.append({"name": name, "path": str(binary.relative_to(ROOT)) if binary.is_relative_to(ROOT) else str(binary),
                     "bytes": binary.stat().st_size, "zip_bytes": z.stat().st_size})
    return rows


# ------------------------------------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metahub", default=str(ROOT / "target" / "release" / "metahub"))
    ap.add_argument("--release-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--seconds", type=int, default=8, help="per wrk run (at most 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "target" / "bench" / "e2e.json"))
    ap.add_argument("--skip-dynamodb", action="store_true")
    ap.add_argument("--lambda-runs", type=int, default=9, help="cold starts per function (medians reported)")
    ap.add_argument("--only", choices=["throughput", "counts", "lambda"], action="append",
                    help="run only these parts (repeatable); default all")
    args = ap.parse_args()
    args.seconds = max(1, min(args.seconds, 10))
    parts = set(args.only or ["throughput", "counts", "lambda"])
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="metahub-bench-"))
    log(f"work dir and logs: {workdir}; load {load()}")
    started = time.monotonic()
    results: dict = {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}",
        "load_before": load(),
        "wrk": {"seconds": args.seconds, "threads": args.threads, "connections": args.connections},
        "metahub": args.metahub,
    }

    root = workdir / "registry-data"
    root.mkdir()
    storage, storage_url = start_storage(root)
    up_proc, upstream = start_registry(workdir, "upstream", root, storage_url, access_log=False)
    counted_proc, counted_upstream = start_registry(workdir, "upstream-counted", root, storage_url, access_log=True)
    pushed = registry_push.push_test_content(upstream)
    log(f"upstream {upstream} (quiet) and {counted_upstream} (access log) share one storage; pushed {REPO}")

    stores: list[tuple[str, str, dict]] = [("embedded (file)", "file", {})]
    moto_env: dict = {}
    if not args.skip_dynamodb:
        port = free_port()
        moto = start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], workdir)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2).status_code < 500, "moto", moto)
        moto_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        stores.append(("DynamoDB (moto)", "dynamodb", moto_env))

    def make_hub(label: str, kind: str, env: dict, up: str, suffix: str, extra: list[str] | None = None) -> Metahub:
        name = f"metahub-{kind}-{suffix}"
        store = f"file:{workdir / name / 'store.redb'}" if kind == "file" else f"dynamodb:bench-{suffix}"
        (workdir / name).mkdir(exist_ok=True)
        hub = Metahub(args.metahub, workdir, name, store, up, env=env, extra=extra)
        if kind == "dynamodb":
            hub.cli("store", "init")
        hub.provision()
        hub.start()
        return hub

    results["throughput"] = {}
    results["counts"] = {}
    results["rss"] = {}
    for label, kind, env in stores:
        if "throughput" in parts:
            log(f"throughput, store {label}")
            hub = make_hub(label, kind, env, upstream, "wrk")
            results["throughput"][label] = throughput(hub, upstream, pushed, args, workdir)
            results["rss"][f"metahub serve, {label}, after the wrk runs"] = peak_rss_kib(hub.proc.pid)
            stop(hub.proc)
        if "counts" in parts:
            log(f"upstream requests per pull, store {label}")
            hub = make_hub(label, kind, env, counted_upstream, "count")
            counter = Counter(counted_proc.log_path)  # type: ignore[attr-defined]
            counts = count_pulls(hub, counter, workdir / f"pulls-{kind}")
            counts_load = heads_under_load(hub, counter, 3, args.threads, args.connections, workdir)
            results["counts"][label] = {"pulls": counts, "under_load": counts_load}
            stop(hub.proc)

    if "throughput" in parts:
        log("throughput with --tag-ttl 10s (embedded store), tag GET only")
        hub = make_hub("embedded (file)", "file", {}, upstream, "ttl", extra=["--tag-ttl", "10s"])
        results["throughput_ttl"] = throughput(hub, upstream, pushed, args, workdir,
                                               only=["GET manifest by tag", "HEAD manifest by tag"])
        stop(hub.proc)

    if "lambda" in parts:
        release_dir = Path(args.release_dir)
        lambda_load_before = load()
        results["lambda_when"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["sizes"] = sizes(release_dir, workdir)
        results["lambda"] = {}
        if not moto_env:
            results["lambda_missing"] = "DynamoDB (moto) was skipped: the registry and token functions need a table"
        else:
            table = "bench-lambda"
            helper = Metahub(args.metahub, workdir, "lambda-store", f"dynamodb:{table}", upstream, env=moto_env)
            helper.cli("store", "init")
            helper.provision()
            # configured as template.yaml deploys them: secrets from SSM (three reads during init)
            import boto3  # moto depends on it

            ssm = boto3.client("ssm", endpoint_url=moto_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
            for pname, value in SSM_PARAMS.items():
                ssm.put_parameter(Name=pname, Type="SecureString", Overwrite=True,
                                  Value=value or base64.b64encode(os.urandom(32)).decode())
            names = list(SSM_PARAMS)
            fn_env = {**moto_env, "METAHUB_STORE": f"dynamodb:{table}", "METAHUB_PUBLIC_URL": "https://bench.example",
                      "METAHUB_UPSTREAM": upstream, "METAHUB_SIGNING_KEY_PARAM": names[0],
                      "METAHUB_ORIGIN_SECRET_PARAM": names[1], "METAHUB_UPSTREAM_CREDENTIALS_PARAM": names[2]}
            basic = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
            token_bin = lambda_binary("metahub-token", release_dir)
            registry_bin = lambda_binary("metahub-registry", release_dir)
            admin_bin = lambda_binary("metahub-admin", release_dir)
            token = None
            scope = f"service=metahub&scope=repository:{REPO}:pull"
            if token_bin:
                log(f"cold start {token_bin}")
                r = cold_starts(token_bin, fn_env, [("GET", "/token", {"authorization": basic}, scope)] * 2, workdir,
                                "metahub-token", args.lambda_runs)
                for inv in r["invocations"]:
                    try:
                        token = token or json.loads(inv["body"] or "{}").get("token")
                    except ValueError:
                        pass
                    inv["body"] = "<token, not kept>" if inv["status"] == 200 else inv["body"][:200]
                results["lambda"]["metahub-token"] = r
            if registry_bin:
                log(f"cold start {registry_bin}")
                events = [("GET", "/v2/", {}, "")]
                if token:
                    auth = {"authorization": f"Bearer {token}", "accept": ACCEPT_INDEX}
                    events += [("GET", f"/v2/{REPO}/manifests/latest", auth, "")] * 2
                results["lambda"]["metahub-registry"] = short_bodies(
                    cold_starts(registry_bin, fn_env, events, workdir, "metahub-registry", args.lambda_runs))
            if admin_bin:
                log(f"cold start {admin_bin}")
                # as template.yaml deploys it: the table and the upstream, no SSM parameter, behind AWS_IAM
                admin_env = {**moto_env, "METAHUB_STORE": f"dynamodb:{table}", "METAHUB_UPSTREAM": upstream}
                caller = "arn:aws:sts::123456789012:assumed-role/ops/bench"
                results["lambda"]["metahub-admin"] = short_bodies(cold_starts(
                    admin_bin, admin_env, [("GET", "/admin/machine-types", {}, "", caller)] * 2, workdir, "metahub-admin",
                    args.lambda_runs))
            if registry_bin and token_bin:
                log("cold pull: registry and token functions cold, one pull by tag")
                results["cold_pull"] = cold_pull(registry_bin, token_bin, fn_env, basic, workdir)
            missing = [n for n, b in (("metahub-token", token_bin), ("metahub-registry", registry_bin), ("metahub-admin", admin_bin)) if not b]
            if missing:
                results["lambda_missing"] = f"not built: {', '.join(missing)} (cargo build --release -p metahub-registry -p metahub-token -p metahub-admin)"
        results["lambda_load"] = [lambda_load_before, load()]

    results["load_after"] = load()
    results["elapsed_s"] = time.monotonic() - started
    out_path.write_text(json.dumps(results, indent=2))
    log(f"done in {results['elapsed_s']:.0f}s; results in {out_path}")
    storage.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
