#!/usr/bin/env python3
"""What real clients do with MetaHub's answer when it is saturated (issue 32, item 4).

MetaHub's answer when saturated is a registry error with `Retry-After`: the hashing gate's
`503 UNAVAILABLE "too many logins at once; try again shortly"` + `Retry-After: 1` on /token, and any 503/429 of
/v2/ (the store or the upstream failing, the Lambda time budget) with `Retry-After`. To see what each client does
with it, deterministically, a proxy in front of a real `metahub serve` answers the first K requests of one kind with
exactly that answer, then lets the rest through; it records every request and when it came. Then containerd
(`ctr images pull`) and podman (`podman pull`) pull through it, K = 1 and K = 5, for the token and for the HEAD of
the tag. Reported: exit status, the client's last error line, how many times it asked, and the gaps between tries.

Uses the e2e harness (docker-registry upstream, metahub serve with METAHUB_BIN, containerd as the e2e suite runs it,
podman with its own storage). Everything listens on 127.0.0.1; every client run is bounded (120 s).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from load_module import load_module  # noqa: E402

BUSY = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "too many logins at once; try again shortly"}]}).encode()


class SaturatingProxy:
    """Forwards to `backend`; the first `refuse` requests whose method and path start match `kind` get MetaHub's
    503 + Retry-After instead."""

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self.kind: tuple[str, str] = ("", "")
        self.refuse = 0
        self.seen: list[tuple[float, str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                method, path = self.command, self.path
                with proxy.lock:
                    refused = method == proxy.kind[0] and path.startswith(proxy.kind[1]) and proxy.refuse > 0
                    if refused:
                        proxy.refuse -= 1
                if refused:
                    proxy.seen.append((time.monotonic(), method, path, 503))
                    self.send_response(503)
                    for k, v in [("Content-Type", "application/json"), ("Retry-After", "1"),
                                 ("Docker-Distribution-API-Version", "registry/2.0"), ("Content-Length", str(len(BUSY)))]:
                        self.send_header(k, v)
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(BUSY)
                    return
                c = http.client.HTTPConnection("127.0.0.1", proxy.backend_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")}
                headers["Host"] = self.headers.get("Host", "")
                c.request(method, path, body=body or None, headers=headers)
                r = c.getresponse()
                data = r.read()
                proxy.seen.append((time.monotonic(), method, path, r.status))
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                # a HEAD keeps the length of the body it did not send
                self.send_header("Content-Length", r.getheader("Content-Length", "0") if method == "HEAD" else str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)
                c.close()

            do_GET = do_HEAD = do_POST = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def arm(self, method: str, path_prefix: str, refuse: int) -> None:
        with self.lock:
            self.kind, self.refuse, self.seen = (method, path_prefix), refuse, []


def main() -> int:
    os.environ.setdefault("METAHUB_BIN", str(ROOT / "target" / "debug" / "metahub"))
    e2e = load_module("e2e_conftest", ROOT / "tests" / "e2e" / "conftest.py")
    import registry_push

    work = Path(tempfile.mkdtemp(prefix="mh-saturated-", dir="/tmp"))
    results = []
    try:
        upstream = e2e.start_registry(work, "upstream")
        registry_push.push_test_content(upstream.url)
        hub = e2e.Metahub(port=e2e.free_port(), store=f"file:{work / 'store.redb'}", upstream=upstream,
                          env={"RUST_LOG": "warn"})
        features, match = e2e.MACHINE_TYPES["skylake"]
        hub.put_machine_type("skylake", features, match)
        login, password = e2e.creds("skylake")
        hub.put_account(login, password, "skylake")
        proxy = SaturatingProxy(hub.port)
        hub.proc = e2e.Proc("metahub", [e2e.METAHUB_BIN, "serve", "--listen", hub.host, "--public-url",
                                        f"http://127.0.0.1:{proxy.port}", "--upstream", upstream.url, "--store", hub.store],
                            work, env={"RUST_LOG": "warn"})
        e2e.wait_until(lambda: e2e.requests.get(f"{hub.url}/v2/", timeout=2).status_code == 401, "metahub", proc=hub.proc)
        ref = f"127.0.0.1:{proxy.port}/org/app:latest"

        d = work / "containerd"
        d.mkdir()
        sock = d / "containerd.sock"
        disabled = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
        (d / "config.toml").write_text(
            f'version = 2\nroot = "{d / "root"}"\nstate = "{d / "state"}"\ndisabled_plugins = {json.dumps(disabled)}\n'
            f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n[debug]\n  address = ""\n  level = "info"\n'
            '[metrics]\n  address = ""\n')
        containerd = e2e.Proc("containerd", ["containerd", "--config", str(d / "config.toml")], work)
        e2e.wait_until(lambda: sock.exists(), "containerd socket", proc=containerd)
        time.sleep(1)
        pbase = Path(tempfile.mkdtemp(prefix="mh-pm-", dir="/tmp"))
        (pbase / "tmp").mkdir()
        (pbase / "auth.json").write_text("{}")
        namespaces = iter(range(1, 100))

        def ctr() -> subprocess.CompletedProcess:
            ns = f"sat{next(namespaces)}"
            return subprocess.run(["ctr", "-a", str(sock), "-n", ns, "images", "pull", "--snapshotter", "native",
                                   "--plain-http", "--user", f"{login}:{password}", ref],
                                  capture_output=True, timeout=120)

        def podman() -> subprocess.CompletedProcess:
            shutil.rmtree(pbase / "root", ignore_errors=True)
            return subprocess.run(["podman", "--root", str(pbase / "root"), "--runroot", str(pbase / "run"),
                                   "--tmpdir", str(pbase / "tmp"), "--storage-driver", "vfs", "--cgroup-manager",
                                   "cgroupfs", "--events-backend", "none", "pull", "--tls-verify=false", "-q",
                                   "--creds", f"{login}:{password}", ref],
                                  capture_output=True, timeout=120, env={**os.environ, "HOME": str(pbase),
                                                                         "REGISTRY_AUTH_FILE": str(pbase / "auth.json")})

        cases = [("token (POST, containerd)", "POST", "/token"), ("token (GET)", "GET", "/token"),
                 ("HEAD of the tag", "HEAD", "/v2/org/app/manifests/latest"),
                 ("GET of the tag", "GET", "/v2/org/app/manifests/latest")]
        for client, run in (("containerd (ctr)", ctr), ("podman", podman)):
            for label, method, path in cases:
                for refuse in (1, 5):
                    proxy.arm(method, path, refuse)
                    t0 = time.monotonic()
                    try:
                        p = run()
                        status, err = p.returncode, (p.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
                    except subprocess.TimeoutExpired:
                        status, err = "timeout", ""
                    elapsed = time.monotonic() - t0
                    tries = [t for t, m, pth, _ in proxy.seen if m == method and pth.startswith(path)]
                    refused = sum(1 for _, m, pth, s in proxy.seen if m == method and pth.startswith(path) and s == 503)
                    gaps = [round(b - a, 2) for a, b in zip(tries, tries[1:])]
                    row = {"client": client, "answer to": label, "refused": refuse, "hit": refused,
                           "asked": len(tries), "gaps_s": gaps, "exit": status, "elapsed_s": round(elapsed, 1),
                           "last_line": err[:200]}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for name in ("containerd",):
            obj = locals().get(name)
            if obj is not None:
                obj.stop()
        hub_obj = locals().get("hub")
        if hub_obj is not None:
            hub_obj.stop()
        e2e.stop_all()
    out = ROOT / "target" / "bench" / "saturated_clients.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
