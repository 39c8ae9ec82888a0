"""Slow connections against one `metahub serve` (issue 33): 300 connections that send half a request header and 50
`POST /token` that send one byte of their body, then nothing. Prints the sockets the server holds before, 0.5 s into
the attack and SECONDS later, and how a `GET /v2/` fares during the attack.

    python3 bench/slow_connections.py BINARY SECONDS [SERVE FLAGS...]      # NOFILE=256 (default): the file limit

The server runs under `prlimit --nofile=$NOFILE` (util-linux), with no upstream (nothing is pulled), on 127.0.0.1.
docs/reliability.md ("Slow connections") has the figures; tests/e2e/test_hardening.py is the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import requests

HALF_SENT, SLOW_BODIES = 300, 50


def sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def main() -> None:
    binary, seconds, flags = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tempfile.mkdtemp(prefix="slow-connections-")
    server = subprocess.Popen(
        ["prlimit", f"--nofile={os.environ.get('NOFILE', '256')}", binary, "serve", "--listen", f"127.0.0.1:{port}",
         "--upstream", "http://127.0.0.1:9", "--store", f"file:{store}/store.redb", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.1)
        before = sockets(server.pid)
        attack = []
        for _ in range(HALF_SENT):
            s = socket.create_connection(("127.0.0.1", port))
            s.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow")
            attack.append(s)
        body_length = 246
        for _ in range(SLOW_BODIES):
            s = socket.create_connection(("127.0.0.1", port))
            s.send(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                   b"Content-Length: %d\r\n\r\nx" % body_length)
            attack.append(s)
        time.sleep(0.5)
        during = sockets(server.pid)
        t = time.monotonic()
        try:
            r = requests.get(f"http://127.0.0.1:{port}/v2/", timeout=30)
            ping = f"{(time.monotonic() - t) * 1000:.0f} ms, status {r.status_code}"
        except requests.RequestException as e:
            ping = f"failed after {time.monotonic() - t:.1f} s ({type(e).__name__})"
        time.sleep(seconds)
        after = sockets(server.pid)
        print(f"{binary} {' '.join(flags)} (open file limit {os.environ.get('NOFILE', '256')}): sockets held before "
              f"{before}, 0.5 s into the attack {during}, {seconds:.0f} s later {after}; GET /v2/ during the attack: {ping}")
        for s in attack:
            s.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
