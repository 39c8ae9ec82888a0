"""Attacks, each against a running metahub: SSRF through names, query strings, headers and upstream redirects;
forged, expired, wrong-audience and wrong-scope tokens; password brute force (throttled per account and per
source); oversized headers and bodies; the admin API with a pull token; and no secret in the logs.
(test_errors.py covers malformed names, alg:none, tampered and forged-expired tokens and another repository's token.)"""

from __future__ import annotations

import base64
import hashlib
import http.client
import hmac
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cryptography.hazmat.primitives import hashes  # cryptography (tests/install.sh): an attacker's own RSA key
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import (
    ADMIN_SECRET,
    METAHUB_BIN,
    start_admin_metahub,
    Canary,
    FaultProxy,
    assert_registry_error,
    challenge,
    creds,
    get_token,
    parse_challenge,
    raw_request,
    run,
    start_configured_metahub,
    v2,
)
import registry_push


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict:
    return json.loads(unb64url(token.split(".")[1]))


def hs256(header: dict, payload: dict, key: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def refused(hub, token: str, repo: str = "org/app") -> None:
    r = v2(hub, f"{repo}/manifests/latest", token)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


# ---------------------------------------------------------------------------------------------
# fixtures: metahub in front of a fault proxy (to make the upstream redirect), and a canary that must stay untouched


@pytest.fixture(scope="module")
def canary():
    # another host name than the upstream's: "localhost" is not "127.0.0.1" to a host check
    c = Canary("127.0.0.1")
    yield c
    c.stop()


# `proxy`, `hub` and `token` are conftest's: a FaultProxy in front of the upstream and a front behind it.
pytestmark = pytest.mark.usefixtures("healthy_proxy")


# ---------------------------------------------------------------------------------------------
# SSRF


def test_ssrf_through_names(hub, token, canary, proxy):
    """No name ever becomes a host: names with a host are invalid; a name that looks like one goes to the upstream."""
    target = f"127.0.0.1:{canary.port}"
    for path in [
        f"/v2/{target}/x/manifests/latest",
        f"/v2/localhost:{canary.port}/x/manifests/latest",
        f"/v2/http://{target}/x/manifests/latest",
        f"/v2/x@{target}/manifests/latest",
        f"/v2/%2f%2f{target}/x/manifests/latest",
        f"/v2/org/app/blobs/http:%2f%2f{target}%2fx",
        f"//{target}/v2/org/app/manifests/latest",
    ]:
        status, _, body = raw_request(hub.url, "GET", path, {"Authorization": f"Bearer {token}"})
        assert 400 <= status < 500, (path, status, body)
        assert_registry_error(status, body, status)
    # a valid name that reads like a host is just a repository on the configured upstream
    t = get_token(hub, "skylake", repo="localhost/x")
    r = v2(hub, "localhost/x/manifests/latest", t)
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
    assert proxy.hits_matching(r"^/v2/localhost/x/manifests/latest$")
    assert canary.hits == []


def test_ssrf_through_query_strings_and_headers(hub, token, canary):
    """Query parameters and Host/X-Forwarded-* headers choose nothing; containerd's `ns` only picks among the configured
    upstreams, and one naming any other host is refused."""
    target = f"127.0.0.1:{canary.port}"
    r = requests.get(f"{hub.url}/v2/org/app/manifests/latest?ns={target}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert_registry_error(r.status_code, r.content, 403, {"DENIED"})
    for query in [f"upstream=http://{target}", f"url=http://{target}/x", f"realm=http://{target}/token"]:
        r = requests.get(f"{hub.url}/v2/org/app/manifests/latest?{query}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, (query, r.text)
    for headers in [{"Host": target}, {"X-Forwarded-Host": target, "X-Forwarded-Proto": "http"}, {"Forwarded": f"host={target}"}]:
        status, resp, _ = raw_request(hub.url, "GET", "/v2/", headers)
        assert status == 401
        assert parse_challenge(resp["www-authenticate"])["realm"] == f"{hub.url}/token", resp
    ch = challenge(hub)
    r = requests.get(f"{hub.url}/token", params={"service": ch["service"], "scope": "repository:org/app:pull", "realm": f"http://{target}"}, auth=creds("skylake"), timeout=10)
    assert r.status_code == 200
    assert canary.hits == []


def test_ssrf_through_upstream_redirects(hub, token, canary, proxy, images):
    """The upstream redirects manifests, or challenges with a token realm, to a host that is not configured:
    metahub refuses (502) without contacting it."""
    elsewhere = f"http://localhost:{canary.port}"
    proxy.set("redirect", match=r"/manifests/", location=f"{elsewhere}/v2/org/app/manifests/latest")
    r = v2(hub, "org/app/manifests/unseen-redirect", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    proxy.set("challenge", match=r"/manifests/", www_authenticate=f'Bearer realm="{elsewhere}/token",service="x"')
    r = v2(hub, "org/app/manifests/unseen-realm", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    message = r.json()["errors"][0]["message"]
    assert "not on its own host and port" in message and "localhost" not in message, "client-facing: no host"
    # the upstream's own host on another port (another service there) is refused too
    proxy.set("challenge", match=r"/manifests/", www_authenticate=f'Bearer realm="http://127.0.0.1:{canary.port}/token",service="x"')
    r = v2(hub, "org/app/manifests/unseen-port", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    assert str(canary.port) not in r.json()["errors"][0]["message"]
    proxy.set("challenge", match=r"/manifests/", www_authenticate='Bearer realm="file:///etc/passwd",service="x"')
    r = v2(hub, "org/app/manifests/unseen-file", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    # blobs: a redirect elsewhere is handed to the client (presigned storage URLs live on other hosts), never fetched
    digest = registry_push.sha256(images.images["cpu-skylake"].config)
    proxy.set("redirect", match=r"/blobs/", location=f"{elsewhere}/storage/blob")
    r = v2(hub, f"org/app/blobs/{digest}", token)
    assert r.status_code == 307 and r.headers["Location"] == f"{elsewhere}/storage/blob"
    proxy.set("redirect", match=r"/blobs/", location="file:///etc/passwd")
    # another blob: the location just handed out is reused for a while (BLOB_LOCATION_TTL)
    r = v2(hub, f"org/app/blobs/{registry_push.sha256(images.images['cpu-skylake'].layer)}", token)
    assert_registry_error(r.status_code, r.content, 502, {"UPSTREAM_INVALID"})
    assert canary.hits == [], canary.hits


def test_publishing_follows_no_foreign_token_realm(proxy, canary, images):
    """The push side (`metahub index create`) answers token challenges through the same realm allow-list as the pull
    side: a realm on another host, or on the upstream's host but another port, is refused before any request goes
    there, and the one-line error names neither."""
    for realm_host in [f"localhost:{canary.port}", f"127.0.0.1:{canary.port}"]:
        # only the push client reads blobs (the source's config): the challenge is for it alone
        proxy.set("challenge", match=r"/blobs/", www_authenticate=f'Bearer realm="http://{realm_host}/token",service="x"')
        p = run(
            [METAHUB_BIN, "index", "create", "org/realm-probe:latest", "--from", "org/single:latest",
             "--upstream", proxy.url, "--creds", "ci:publish-secret"],
            check=False,
        )
        stderr = p.stderr.decode()
        errors = [line for line in stderr.splitlines() if line.startswith("metahub: ")]
        assert p.returncode != 0 and len(errors) == 1, stderr
        err = errors[0]  # the other lines are the operator's log, where the refused realm is named (WARN)
        assert "token realm that is not on its own host and port" in err, err
        assert "localhost" not in err and str(canary.port) not in err, err
        assert "publish-secret" not in stderr, stderr
        assert proxy.hits_matching(r"/v2/org/single/blobs/"), "the challenge was delivered"
    assert canary.hits == [], canary.hits


# ---------------------------------------------------------------------------------------------
# tokens


def test_rs256_and_header_tricks_are_refused(hub, token):
    """HS/RS confusion: a token signed RS256 with the attacker's own key (advertised in `jwk`) is refused because
    the algorithm is pinned; so are other HMAC algorithms, `kid`/`jku` tricks and a key of the attacker's."""
    payload = claims_of(token)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": b64url(n.n.to_bytes(256, "big")), "e": b64url(n.e.to_bytes(3, "big"))}
    header = {"alg": "RS256", "typ": "JWT", "jwk": jwk}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    refused(hub, f"{signing_input}.{b64url(sig)}")
    # the public key as an HMAC secret (the classic confusion, with the key the attacker advertised)
    pem = key.public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.SubjectPublicKeyInfo,
    )
    refused(hub, hs256({"alg": "HS256", "typ": "JWT", "jwk": jwk}, payload, pem))
    for header in [
        {"alg": "HS512", "typ": "JWT"},
        {"alg": "HS256", "typ": "JWT", "kid": "../../../../dev/null"},
        {"alg": "HS256", "typ": "JWT", "jku": "http://127.0.0.1:1/keys"},
    ]:
        refused(hub, hs256(header, payload, b""))
        refused(hub, hs256(header, payload, b"\x00" * 32))


def test_not_yet_valid_and_forged_claims_are_refused(hub, token):
    """Without metahub's key, any change of claims breaks the signature; these also carry bad times."""
    payload = claims_of(token)
    now = int(time.time())
    for change in [{"nbf": now + 3600, "iat": now + 3600}, {"exp": now - 60}, {"aud": "other"}, {"iss": "evil"}, {"mt": "cascadelake-a100"}]:
        forged = {**payload, **change}
        refused(hub, hs256({"alg": "HS256", "typ": "JWT"}, forged, b"metahub"))
        # the genuine signature over changed claims
        h, _, s = token.split(".")
        refused(hub, f"{h}.{b64url(json.dumps(forged).encode())}.{s}")


def test_scope_is_what_the_token_grants(hub):
    ch = challenge(hub)

    def token_for(scope: str | None) -> str:
        params = {"service": ch["service"]}
        if scope is not None:
            params["scope"] = scope
        r = requests.get(ch["realm"], params=params, auth=creds("skylake"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["token"]

    for scope in [None, "repository:org/app:push", "repository:org/*:pull", "repository:*:pull", "registry:catalog:*", "repository:org/app/:pull", "repository:ORG/APP:pull"]:
        t = token_for(scope)
        assert v2(hub, "", t).status_code == 200  # a valid token
        r = v2(hub, "org/app/manifests/latest", t)
        assert_registry_error(r.status_code, r.content, {401, 403}, {"UNAUTHORIZED", "DENIED"})
        assert all(a.get("actions") == ["pull"] for a in claims_of(t).get("access", [])), claims_of(t)
    # push is never granted, even when asked together with pull
    t = token_for("repository:org/app:pull,push,delete")
    assert claims_of(t)["access"] == [{"type": "repository", "name": "org/app", "actions": ["pull"]}]
    assert v2(hub, "org/app/manifests/latest", t).status_code == 200


def test_genuinely_expired_token(workdir, upstream, images):
    """A real token of a 1 s lifetime is refused once the 5 s leeway is over."""
    hub = start_configured_metahub(workdir, upstream, "metahub-ttl", ["--token-ttl", "1s"])
    try:
        t = get_token(hub, "skylake")
        assert v2(hub, "org/app/manifests/latest", t).status_code == 200
        time.sleep(7.5)
        refused(hub, t)
        assert v2(hub, "org/app/manifests/latest", get_token(hub, "skylake")).status_code == 200
    finally:
        hub.stop()


def test_token_of_another_service_is_refused(workdir, upstream, images):
    """Same store (same signing key), other `--service`: the audience does not match."""
    a = start_configured_metahub(workdir, upstream, "metahub-aud", ["--service", "metahub"])
    try:
        t = get_token(a, "skylake")
        assert v2(a, "org/app/manifests/latest", t).status_code == 200
    finally:
        a.stop()
    a.serve_args = ["--service", "other-registry"]
    a.start(workdir)
    try:
        assert challenge(a)["service"] == "other-registry"
        refused(a, t)
        own = get_token(a, "skylake")
        assert claims_of(own)["aud"] == "other-registry"
        assert v2(a, "org/app/manifests/latest", own).status_code == 200
        # and a token request naming the other service is refused
        r = requests.get(f"{a.url}/token", params={"service": "metahub", "scope": "repository:org/app:pull"}, auth=creds("skylake"), timeout=10)
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    finally:
        a.stop()


# ---------------------------------------------------------------------------------------------
# brute force


@pytest.fixture
def fresh_hub(workdir, upstream, images):
    """A metahub of its own: lockouts must not leak into other tests."""
    h = start_configured_metahub(workdir, upstream, "metahub-throttle")
    yield h
    h.stop()


class Reply:
    def __init__(self, status: int, content: bytes, headers):
        self.status_code, self.content, self.headers = status, content, headers


def login(hub, user: str, password: str, source: str | None, forwarded_for: str | None = None) -> Reply:
    """A token request from `source`, a loopback address the connection binds to (all of 127.0.0.0/8 is local).
    `X-Forwarded-For` is sent too, always a lie: metahub serve must not trust it."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10, source_address=(source or "127.0.0.1", 0))
    try:
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/token?service=metahub&scope=repository:org/app:pull",
                     headers={"Authorization": f"Basic {auth}", "X-Forwarded-For": forwarded_for or "198.51.100.77"})
        r = conn.getresponse()
        return Reply(r.status, r.read(), r.headers)
    finally:
        conn.close()


def assert_throttled(r: requests.Response) -> None:
    assert_registry_error(r.status_code, r.content, 429, {"TOOMANYREQUESTS"})
    retry = int(r.headers["Retry-After"])
    assert 0 < retry <= 60, retry


def concurrently(n: int, call) -> list:
    """`call(i)` for i in 0..n, all at once (threads: each login is its own connection)."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(call, range(n)))


def peak_rss_mib(hub) -> float:
    """The metahub process's peak resident memory (VmHWM), MiB."""
    for line in open(f"/proc/{hub.proc.popen.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_concurrent_wrong_passwords_from_one_source_are_not_all_checked(fresh_hub):
    """Check-and-reserve is atomic: a burst of 40 guesses gets the 5 free failures checked, the rest 429."""
    user, password = creds("skylake")
    replies = concurrently(40, lambda i: login(fresh_hub, user, f"guess-{i}", "127.0.3.1"))
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(401) == 5, statuses
    for r in replies:
        if r.status_code == 429:
            assert_throttled(r)
    # the right password from another source is not locked out
    assert login(fresh_hub, user, password, "127.0.3.2").status_code == 200
    # the guessing source itself backs off, whatever it sends
    assert_throttled(login(fresh_hub, user, password, "127.0.3.1"))


def test_guessing_from_many_sources_does_not_lock_out_the_node_class(fresh_hub):
    """30 failures from 30 sources: the login's ceiling refuses the sources that failed (even with the right
    password), while a clean source with the right password logs in."""
    user, password = creds("skylake")
    for i in range(30):
        r = login(fresh_hub, user, f"guess-{i}", f"127.0.4.{i + 1}")
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert_throttled(login(fresh_hub, user, "guess-x", "127.0.4.1"))
    assert_throttled(login(fresh_hub, user, password, "127.0.4.2"))
    assert login(fresh_hub, user, password, "127.0.4.200").status_code == 200
    assert login(fresh_hub, *creds("zen2"), "127.0.4.1").status_code == 200


def test_spraying_from_one_source_is_throttled(fresh_hub):
    attacker = "127.0.2.9"
    for i in range(30):
        r = login(fresh_hub, f"nobody-{i}", "guess", attacker)
        assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert_throttled(login(fresh_hub, "nobody-30", "guess", attacker))
    assert_throttled(login(fresh_hub, *creds("zen2"), attacker))
    # the same accounts from another source are fine
    assert login(fresh_hub, *creds("zen2"), "127.0.2.10").status_code == 200


def test_spraying_without_forwarded_for_is_throttled_per_peer(fresh_hub):
    for i in range(30):
        login(fresh_hub, f"spray-{i}", "guess", None, forwarded_for=f"198.51.100.{i}")
    assert_throttled(login(fresh_hub, "spray-30", "guess", None))


def test_malformed_logins_are_refused_before_anything(fresh_hub):
    """Bad syntax or length: 401 at once, never counted (the source is not throttled afterwards)."""
    for user in ["a" * 65, "with space", "x/y", "é", "a" * 5000]:
        for _ in range(8):
            r = login(fresh_hub, user, "guess", "127.0.5.1")
            assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    r = login(fresh_hub, "someone", "p" * 2000, "127.0.5.1")
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert login(fresh_hub, *creds("zen2"), "127.0.5.1").status_code == 200


def test_empty_basic_credentials_are_anonymous(fresh_hub, workdir, upstream, images):
    """`Authorization: Basic Og==` (the OCI conformance client sends it): a 401 that is not a guess, or an anonymous
    token where anonymous pulls are on."""
    for _ in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", fresh_hub.port, timeout=10, source_address=("127.0.6.1", 0))
        conn.request("GET", "/token?service=metahub", headers={"Authorization": "Basic Og=="})
        r = conn.getresponse()
        assert_registry_error(r.status, r.read(), 401, {"UNAUTHORIZED"})
        conn.close()
    assert login(fresh_hub, *creds("zen2"), "127.0.6.1").status_code == 200
    anon = start_configured_metahub(workdir, upstream, "metahub-anon", ["--anonymous-machine-type", "zen2"])
    try:
        r = requests.get(f"{anon.url}/token", params={"service": "metahub", "scope": "repository:org/app:pull"},
                         headers={"Authorization": "Basic Og=="}, timeout=10)
        assert r.status_code == 200, r.text
        assert claims_of(r.json()["token"])["mt"] == "zen2"
        assert v2(anon, "org/app/manifests/latest", r.json()["token"]).status_code == 200
    finally:
        anon.stop()


def test_a_login_flood_keeps_memory_bounded(fresh_hub):
    """500 concurrent logins of unknown accounts from 500 sources: hashing is bounded (19 MiB each), the excess is
    refused at once with 503, and peak RSS stays under 128 MiB. Then logins work again."""
    def unknown(i: int) -> Reply:
        return login(fresh_hub, f"ghost-{i}", "guess", f"127.1.{i // 200}.{i % 200 + 1}")

    replies = concurrently(500, unknown)
    for r in replies:
        assert_registry_error(r.status_code, r.content, {401, 503}, {"UNAUTHORIZED", "UNAVAILABLE"})
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
    assert any(r.status_code == 401 for r in replies), "some were checked"
    peak = peak_rss_mib(fresh_hub)
    print(f"peak RSS after 500 concurrent logins: {peak:.1f} MiB")
    assert peak < 128, f"peak RSS {peak:.1f} MiB"
    assert login(fresh_hub, *creds("zen2"), "127.0.7.1").status_code == 200


# ---------------------------------------------------------------------------------------------
# oversized requests


def send_raw(hub, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes on a fresh connection; return what came back (b"" if the server closed it)."""
    with socket.create_connection(("127.0.0.1", hub.port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close while we are still sending: that is a refusal
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


def alive(hub) -> None:
    r = requests.get(f"{hub.url}/v2/", timeout=5)
    assert r.status_code == 401


@pytest.mark.parametrize(
    "what,request_bytes",
    [
        ("one 1 MiB header", b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * (1 << 20) + b"\r\nConnection: close\r\n\r\n"),
        ("500 headers", b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"Connection: close\r\n\r\n"),
        ("a 1 MiB path", b"GET /v2/" + b"a/" * (1 << 19) + b"manifests/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ],
)
def test_oversized_headers(hub, what, request_bytes):
    raw = send_raw(hub, request_bytes)
    status = status_of(raw)
    # refused: an HTTP 4xx, or the connection closed without an answer
    assert status is None or 400 <= status < 500, (what, raw[:300])
    alive(hub)


def test_big_header_within_limits_is_a_registry_error(hub):
    status, _, body = raw_request(hub.url, "GET", "/v2/org/app/manifests/latest", {"Authorization": "Bearer " + "a" * 60000})
    assert_registry_error(status, body, 401, {"UNAUTHORIZED"})


def post_big_token_form(hub) -> bytes:
    body = b"grant_type=password&username=m-skylake&password=" + b"x" * (16 << 20)
    head = b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    return send_raw(hub, head + body, timeout=20)


def test_oversized_token_body(hub):
    """A 16 MiB POST to /token is refused without being taken in whole; the server stays up."""
    raw = post_big_token_form(hub)
    assert status_of(raw) in (None, 400, 413), raw[:300]
    alive(hub)


def test_oversized_token_body_is_a_registry_error(hub):
    raw = post_big_token_form(hub)
    assert status_of(raw) == 413, raw[:300]
    assert_registry_error(413, raw.split(b"\r\n\r\n", 1)[1], 413)


def test_oversized_basic_credentials(hub):
    r = requests.get(f"{hub.url}/token", params={"service": "metahub"}, auth=("m-skylake", "p" * 50000), timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})


# ---------------------------------------------------------------------------------------------
# admin API


def test_admin_api_refuses_a_pull_token(workdir, upstream, images):
    hub = start_admin_metahub(workdir, upstream)
    try:
        token = get_token(hub, "skylake")
        for method, path, payload in [
            ("GET", "/admin/machine-types", None),
            ("GET", "/admin/accounts", None),
            ("PUT", "/admin/machine-types/evil", b'{"features":["cpu:skylake"]}'),
            ("PUT", "/admin/accounts/evil", b'{"machineType":"skylake","password":"x"}'),
            ("DELETE", "/admin/accounts/m-skylake", None),
        ]:
            status, _, body = raw_request(hub.url, method, path, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, payload)
            # refused as unauthenticated, never served and never "no such route": /admin is mounted (control below)
            assert_registry_error(status, body, {401, 403})
        # positive control: the same routes answer the admin secret, so the refusals above are the auth at work
        status, _, body = raw_request(hub.url, "GET", "/admin/machine-types", {"Authorization": f"Bearer {ADMIN_SECRET}"}, None)
        assert status == 200 and b"skylake" in body, (status, body[:200])
        # and nothing changed: the account still logs in
        assert get_token(hub, "skylake")
    finally:
        hub.stop()


# ---------------------------------------------------------------------------------------------
# secrets in logs


def test_no_secret_in_logs(workdir, upstream, images):
    """Debug logs of logins (good and bad, GET and POST), pulls and an authenticated upstream contain no password,
    no token (ours or the upstream's) and no Basic credentials."""
    up_user, up_password = "upstream-user", "UPSTREAM-pw-" + "9f3c1e"
    proxy = FaultProxy(upstream.url)
    proxy.require_auth = ("bearer", up_user, up_password)
    hub = start_configured_metahub(
        workdir, proxy, "metahub-secrets", env={"RUST_LOG": "debug", "METAHUB_UPSTREAM_USERNAME": up_user, "METAHUB_UPSTREAM_PASSWORD": up_password}
    )
    try:
        secrets = [up_password, proxy.token, base64.b64encode(f"{up_user}:{up_password}".encode()).decode()]
        tokens = []
        for mt in ("skylake", "zen2"):
            login_, password = creds(mt)
            secrets += [password, base64.b64encode(f"{login_}:{password}".encode()).decode()]
            t = get_token(hub, mt)
            tokens.append(t)
            r = v2(hub, "org/app/manifests/latest", t)
            assert r.status_code == 200, r.text
            r = v2(hub, f"org/app/blobs/{registry_push.sha256(images.images['generic-amd64'].config)}", t)
            assert r.status_code == 307
        r = requests.post(f"{hub.url}/token", data={"grant_type": "password", "username": "m-skylake", "password": "pw-skylake-secret", "service": "metahub", "scope": "repository:org/app:pull"}, timeout=10)
        tokens.append(r.json()["access_token"])
        for wrong in ("WRONG-guess-Alpha", "WRONG-guess-Beta"):
            secrets.append(wrong)
            assert login(hub, "m-skylake", wrong, "127.0.3.1").status_code == 401
            r = requests.post(f"{hub.url}/token", data={"grant_type": "password", "username": "m-zen2", "password": wrong}, timeout=10)
            assert r.status_code == 401
        refused(hub, tokens[0][:-4] + "AAAA")
        assert proxy.hits_matching(r"^/token")  # the upstream token flow did run
        for t in tokens:
            secrets += [t, t.split(".")[2]]
        time.sleep(0.5)
        log = hub.log()
        assert "DEBUG" in log, "the log is not at debug level"
        leaked = [s for s in secrets if s in log]
        assert not leaked, f"secrets in {hub.proc.log_path}: {leaked}"
    finally:
        hub.stop()
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# memory: caches are bounded in bytes


def test_large_manifests_keep_memory_bounded(workdir, upstream, images):
    """40 distinct 3.5 MB indexes pulled (and pulled again by digest): every cache is bounded in bytes, so peak RSS
    stays under 128 MiB with the defaults (it reached 172 MiB when caches were bounded by entry count)."""
    hub = start_configured_metahub(workdir, upstream, "metahub-bigmanifests")
    try:
        doc = json.loads(images.tags["org/app"][0])
        entry = doc["manifests"][0]
        reg = registry_push.Registry(upstream.url)
        token = get_token(hub, "skylake")
        for n in range(40):
            # the same child many times, each entry with its own annotation: ~3.5 MB, all valid for the registry
            entries = [{**entry, "annotations": {"e2e.n": f"{n}-{i}", "e2e.pad": "x" * 150}} for i in range(7_000)]
            body = registry_push.canonical({**doc, "manifests": entries, "annotations": {"e2e.big": str(n)}})
            assert 3_300_000 < len(body) < 3_900_000, len(body)
            reg.push_manifest("org/app", f"big-{n}", body, images.tags["org/app"][1])
            r = v2(hub, f"org/app/manifests/big-{n}", token)
            assert r.status_code == 200, r.text[:300]
            by_digest = v2(hub, f"org/app/manifests/{r.headers['Docker-Content-Digest']}", token)
            assert by_digest.status_code == 200 and by_digest.content == r.content
        peak = peak_rss_mib(hub)
        print(f"peak RSS after 40 manifests of 3.5 MB: {peak:.1f} MiB")
        assert peak < 128, f"peak RSS {peak:.1f} MiB"
    finally:
        hub.stop()
