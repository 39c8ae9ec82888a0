"""Issue 33, hardening round 3, against a running `metahub serve`: slow and silent connections are closed by the
listener's timeouts while pulls go on, connections past the cap are answered 503 instead of hanging, the store and
secret files are owner-only (and refused otherwise), admin page sessions end at sign-out on either store, and a
non-loopback `--metrics-listen` needs its flag."""

from __future__ import annotations

import os
import select
import socket
import stat
import time

import pytest
import requests

from conftest import (
    ADMIN_SECRET,
    METAHUB_BIN,
    assert_registry_error,
    creds,
    run,
    skopeo_raw,
    start_configured_metahub,
)

HEADER_TIMEOUT = 3  # seconds, the --header-timeout and --body-timeout of the slow-connection test
HALF_SENT = 300  # connections that send half a request header, then nothing
SLOW_BODIES = 50  # POST /token whose body trickles at one byte per second
GENEROUS = 60  # seconds within which every attacking connection must have been closed


def open_sockets(pid: int) -> int:
    """How many sockets the process holds (its listener included)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    return s


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed `s` (reads whatever answer it sent first)."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def slow_hub(workdir, upstream, images):
    hub = start_configured_metahub(workdir, upstream, "metahub-slow", [
        "--header-timeout", f"{HEADER_TIMEOUT}s", "--body-timeout", f"{HEADER_TIMEOUT}s", "--request-timeout", "20s",
        "--max-connections", "1000"])
    yield hub
    hub.stop()


def test_slow_and_silent_connections_are_closed_while_pulls_go_on(slow_hub, images):
    ref = f"{slow_hub.host}/org/app:latest"
    pid = slow_hub.proc.popen.pid
    before = open_sockets(pid)
    started = time.monotonic()
    attackers: list[socket.socket] = []
    for _ in range(HALF_SENT):
        s = connect(slow_hub.port)
        s.send(b"GET /v2/ HTTP/1.1\r\nHost: " + slow_hub.host.encode() + b"\r\nUser-Agent: slow")
        attackers.append(s)
    body = b"grant_type=password&service=metahub&username=" + b"x" * 200
    trickling: list[socket.socket] = []
    for _ in range(SLOW_BODIES):
        s = connect(slow_hub.port)
        s.send(b"POST /token HTTP/1.1\r\nHost: " + slow_hub.host.encode()
               + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body[:1])
        trickling.append(s)
    attackers += trickling
    time.sleep(0.5)
    held_during = open_sockets(pid)

    # a normal pull (token, manifest, through skopeo) meanwhile, timed
    t = time.monotonic()
    skopeo_raw(ref, creds("skylake"))
    pull_seconds = time.monotonic() - t

    open_attackers = set(range(len(attackers)))
    sent = 1
    deadline = started + GENEROUS
    while open_attackers and time.monotonic() < deadline:
        for i in list(open_attackers):
            if closed_by_server(attackers[i]):
                open_attackers.discard(i)
        for i, s in enumerate(trickling, start=HALF_SENT):  # one byte a second, as long as the server listens
            if i in open_attackers and sent < len(body):
                try:
                    s.send(body[sent:sent + 1])
                except OSError:
                    open_attackers.discard(i)
        sent += 1
        select.select([], [], [], 1)
    closed_after = time.monotonic() - started
    held_after = open_sockets(pid)
    for s in attackers:
        s.close()
    t = time.monotonic()
    skopeo_raw(ref, creds("skylake"))
    pull_after = time.monotonic() - t
    print(f"\nslow connections: {HALF_SENT} half-sent headers + {SLOW_BODIES} bodies at 1 byte/s; "
          f"sockets held by metahub before {before}, during {held_during}, after {held_after}; "
          f"all closed by the server within {closed_after:.1f} s; pull during the attack {pull_seconds:.2f} s, "
          f"after {pull_after:.2f} s")
    assert not open_attackers, f"{len(open_attackers)} attacking connections still open after {GENEROUS} s"
    assert held_during >= HALF_SENT, "the attack did reach the server"
    assert held_after < held_during - HALF_SENT


def test_connections_past_the_cap_are_answered_503_not_left_hanging(workdir, upstream, images):
    hub = start_configured_metahub(workdir, upstream, "metahub-capped", ["--max-connections", "20"])
    try:
        idle = [connect(hub.port) for _ in range(20)]
        try:
            answer = None
            for _ in range(20):  # the 20 above are being accepted; bounded
                r = requests.get(f"{hub.url}/v2/", timeout=30)
                if r.status_code == 503:
                    answer = r
                    break
                time.sleep(0.2)
            assert answer is not None, "no 503 past the cap"
            assert_registry_error(answer.status_code, answer.content, 503, {"UNAVAILABLE"})
            assert answer.headers["Retry-After"] == "1"
        finally:
            for s in idle:
                s.close()
        status = None
        for _ in range(50):  # the server sees the 20 closed
            status = requests.get(f"{hub.url}/v2/", timeout=30).status_code
            if status == 401:
                break
            time.sleep(0.2)
        assert status == 401, "served again once connections are freed"
    finally:
        hub.stop()


# ---------------------------------------------------------------------------------------------
# files


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_store_is_owner_only_and_refused_when_readable(workdir, upstream):
    d = workdir / "store-modes"
    d.mkdir()
    store = d / "new" / "store.redb"
    run([METAHUB_BIN, "store", "init", "--store", f"file:{store}"])
    assert (mode(store), mode(store.parent)) == (0o600, 0o700)
    # a store others may read has leaked its signing key and hashes: anyone could forge a token from it, so no
    # command serves or uses it until the operator fixes it (and nothing is served with the leaked key)
    store.chmod(0o644)
    for cmd in (["serve", "--listen", "127.0.0.1:1", "--upstream", upstream.url], ["account", "list"]):
        p = run([METAHUB_BIN, *cmd, "--store", f"file:{store}"], check=False, timeout=30)
        assert p.returncode != 0, p.stdout
        assert f"chmod 600 {store}".encode() in p.stderr, p.stderr
    store.chmod(0o600)
    run([METAHUB_BIN, "account", "list", "--store", f"file:{store}"])


@pytest.mark.parametrize("flag", ["--admin-secret-file", "--upstream-credentials"])
def test_secret_files_others_may_read_are_refused(workdir, upstream, flag):
    d = workdir / f"secret-modes{flag}"
    d.mkdir()
    secret = d / "secret"
    secret.write_text(ADMIN_SECRET + "\n" if flag == "--admin-secret-file" else '{"auths": {}}')
    for shared in (0o644, 0o640, 0o604):
        secret.chmod(shared)
        p = run([METAHUB_BIN, "serve", "--listen", "127.0.0.1:1", "--upstream", upstream.url,
                 "--store", f"file:{d / 'store.redb'}", flag, str(secret)], check=False, timeout=30)
        assert p.returncode != 0
        assert f"chmod 600 {secret}".encode() in p.stderr and flag.encode() in p.stderr, p.stderr


def test_a_metrics_address_off_loopback_needs_its_flag(workdir, upstream):
    d = workdir / "metrics-public"
    d.mkdir()
    p = run([METAHUB_BIN, "serve", "--listen", "127.0.0.1:1", "--upstream", upstream.url,
             "--store", f"file:{d / 'store.redb'}", "--metrics-listen", "0.0.0.0:0"], check=False, timeout=30)
    assert p.returncode != 0 and b"--metrics-public" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# admin page sessions, on both stores


def sign_in(hub) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{hub.url}/admin/session", json={"secret": ADMIN_SECRET}, timeout=30)
    assert r.status_code == 200, r.text
    return s


def test_sign_out_ends_the_session_on_the_server(admin_metahub):
    hub = admin_metahub
    first, second = sign_in(hub), sign_in(hub)
    cookie = first.cookies["metahub_admin"]
    assert cookie != second.cookies["metahub_admin"], "two sign-ins, two sessions"
    assert first.get(f"{hub.url}/admin/accounts", timeout=30).status_code == 200
    assert first.delete(f"{hub.url}/admin/session", timeout=30).status_code == 204
    # the old cookie, replayed as it was before the browser dropped it
    r = requests.get(f"{hub.url}/admin/accounts", cookies={"metahub_admin": cookie}, timeout=30)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert second.get(f"{hub.url}/admin/accounts", timeout=30).status_code == 200, "the other session goes on"
