"""A stand-in for an AWS_IAM Lambda Function URL: verifies AWS Signature Version 4 independently of the signer under
test (botocore recomputes every signature), then forwards the request to a local target.

Reusable by any test that needs "what AWS would do with this signed request":

    from sigv4_standin import Verifier, SigV4Proxy, Refused, sign

    verifier = Verifier({"AKIDTEST": "secret"}, region="us-east-1")   # service "lambda", 5 min skew
    principal = verifier.verify("PUT", url, headers, body)             # or raises Refused(reason)

    proxy = SigV4Proxy(verifier, target="http://127.0.0.1:5000",
                       forward_headers=lambda principal: {"Authorization": "Bearer <admin secret>"})
    proxy.start(); ... proxy.url ...; proxy.received[-1]; proxy.stop()

    headers = sign("GET", url, {}, b"", "AKIDTEST", "secret", "us-east-1")   # botocore's own signer

What is checked, as AWS documents it: the `AWS4-HMAC-SHA256` Authorization header, a known access key, a credential
scope naming the request's date, the configured region and service, `X-Amz-Date` within `max_skew` of the clock
(a captured request replayed later is refused as expired), `X-Amz-Content-Sha256` equal to the body's hash (signed
payload), and the signature itself over the signed headers. `clock` is injectable so a test can replay a request
"ten minutes later" without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import re
import threading
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping
from urllib.error import HTTPError

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


class Refused(Exception):
    """A request AWS would refuse: 403 with `reason` (the stand-in answers `{"Message": reason}`)."""

    def __init__(self, reason: str, status: int = 403):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Principal:
    access_key: str
    arn: str


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Verifier:
    credentials: dict[str, str]  # access key id -> secret access key
    region: str
    service: str = "lambda"
    max_skew: timedelta = timedelta(minutes=5)
    clock: Callable[[], datetime] = _utcnow
    account: str = "123456789012"

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Principal:
        h = {k.lower(): v for k, v in headers.items()}
        m = _AUTH.match(h.get("authorization", ""))
        if not m:
            raise Refused("Missing or malformed SigV4 Authorization header")
        secret = self.credentials.get(m["key"])
        if secret is None:
            raise Refused("The security token included in the request is invalid")
        if (m["region"], m["service"]) != (self.region, self.service):
            raise Refused(f"Credential should be scoped to region {self.region!r} and service {self.service!r}")
        try:
            at = datetime.strptime(h.get("x-amz-date", ""), AMZ_DATE).replace(tzinfo=timezone.utc)
        except ValueError:
            raise Refused("Missing or malformed X-Amz-Date") from None
        if m["date"] != at.strftime("%Y%m%d"):
            raise Refused("Credential date does not match X-Amz-Date")
        if abs(self.clock() - at) > self.max_skew:
            raise Refused("Signature expired: X-Amz-Date is outside the allowed clock skew")
        signed = m["signed"].split(";")
        if "host" not in signed or any(name not in h for name in signed):
            raise Refused("SignedHeaders must include host and name headers the request carries")
        payload = h.get("x-amz-content-sha256")
        if payload is not None and payload != "UNSIGNED-PAYLOAD" and payload != hashlib.sha256(body).hexdigest():
            raise Refused("The provided x-amz-content-sha256 header does not match what was computed")
        # botocore recomputes the signature over exactly the headers the client says it signed.
        request = AWSRequest(method=method, url=url, data=body, headers={name: h[name] for name in signed})
        request.context["timestamp"] = at.strftime(AMZ_DATE)
        auth = SigV4Auth(Credentials(m["key"], secret), self.service, self.region)
        canonical = auth.canonical_request(request)
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, m["signature"]):
            raise Refused("The request signature we calculated does not match the signature you provided")
        return Principal(access_key=m["key"], arn=f"arn:aws:iam::{self.account}:user/{m['key']}")


def sign(method: str, url: str, headers: Mapping[str, str], body: bytes, access_key: str, secret_key: str,
         region: str, service: str = "lambda", at: datetime | None = None) -> dict[str, str]:
    """`headers` plus botocore's SigV4 headers (Authorization, X-Amz-Date, X-Amz-Content-Sha256) for this request."""
    all_headers = {**headers, "X-Amz-Content-Sha256": hashlib.sha256(body).hexdigest()}
    request = AWSRequest(method=method, url=url, data=body, headers=all_headers)
    auth = SigV4Auth(Credentials(access_key, secret_key), service, region)
    if at is None:
        auth.add_auth(request)
    else:  # a fixed time (what add_auth does, without its own clock)
        request.context["timestamp"] = at.strftime(AMZ_DATE)
        auth._modify_request_before_signing(request)
        canonical = auth.canonical_request(request)
        signature = auth.signature(auth.string_to_sign(request, canonical), request)
        auth._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class SigV4Proxy:
    """An HTTP server on 127.0.0.1 that verifies each request with `verifier` and forwards the verified ones to
    `target` with the client's signing headers replaced by `forward_headers(principal)`. Every request received is
    kept in `received` (for replay tests); refused ones are answered 403 `{"Message": reason}`, like AWS."""

    verifier: Verifier
    target: str
    forward_headers: Callable[[Principal], dict[str, str]] = lambda principal: {}
    received: list[Received] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "SigV4Proxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                proxy.received.append(Received(self.command, self.path, headers, body))
                try:
                    principal = proxy.verifier.verify(self.command, proxy.url + self.path, headers, body)
                except Refused as refused:
                    proxy.refusals.append(refused.reason)
                    self._answer(refused.status, {"Content-Type": "application/json"},
                                 ('{"Message":%s}' % _json_str(refused.reason)).encode())
                    return
                status, out_headers, out_body = proxy._forward(self.command, self.path, headers, body, principal)
                self._answer(status, out_headers, out_body)

            def _answer(self, status: int, headers: dict[str, str], body: bytes):
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes, principal: Principal):
        drop = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "host",
                "content-length", "connection"}
        out = {k: v for k, v in headers.items() if k.lower() not in drop}
        out.update(self.forward_headers(principal))
        request = urllib.request.Request(self.target.rstrip("/") + path, data=body or None, method=method, headers=out)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, dict(r.headers.items()), r.read()
        except HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()

    def replay(self, received: Received) -> tuple[int, bytes]:
        """Sends a recorded request again, byte for byte (headers, signature and body included)."""
        headers = {k: v for k, v in received.headers.items() if k.lower() not in ("content-length", "connection")}
        request = urllib.request.Request(self.url + received.path, data=received.body or None, method=received.method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, r.read()
        except HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _json_str(s: str) -> str:
    import json

    return json.dumps(s)
