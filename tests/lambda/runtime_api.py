"""A minimal stand-in for the Lambda Runtime API (2018-06-01), enough to drive a real custom-runtime binary.

The binary long-polls `GET /2018-06-01/runtime/invocation/next`; `invoke()` hands it one event and waits for the
`POST .../invocation/{id}/response` (or `/error`) it sends back. `POST /2018-06-01/runtime/init/error` is kept in
`init_errors`. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:metahub-test"


@dataclass
class Outcome:
    """What the runtime posted back for one invocation."""

    request_id: str
    kind: str  # "response" or "error"
    body: bytes
    headers: dict[str, str]
    posted_at: float  # time.monotonic()

    def json(self):
        return json.loads(self.body)


@dataclass
class RuntimeApi:
    server: http.server.ThreadingHTTPServer
    events: "queue.Queue[tuple[str, bytes]]" = field(default_factory=queue.Queue)
    outcomes: dict[str, "queue.Queue[Outcome]"] = field(default_factory=dict)
    init_errors: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    first_poll: float | None = None  # time.monotonic() of the first /next: the end of the binary's init
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def submit(self, event: dict) -> str:
        request_id = str(uuid.uuid4())
        with self.lock:
            self.outcomes[request_id] = queue.Queue()
        self.events.put((request_id, json.dumps(event).encode()))
        return request_id

    def wait(self, request_id: str, timeout: float = 60) -> Outcome:
        try:
            return self.outcomes[request_id].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer to invocation {request_id} within {timeout}s") from None

    def invoke(self, event: dict, timeout: float = 60) -> Outcome:
        return self.wait(self.submit(event), timeout)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def start_runtime_api() -> RuntimeApi:
    api: RuntimeApi | None = None

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the function was stopped while it polled

        def do_GET(self):
            assert api is not None
            if self.path != f"{PREFIX}/invocation/next":
                return self._reply(404, b'{"errorMessage":"unknown path"}')
            if api.first_poll is None:
                api.first_poll = time.monotonic()
            # long poll, as the real API does; wake up now and then to notice a shutdown
            while not api.stopping.is_set():
                try:
                    request_id, body = api.events.get(timeout=0.5)
                except queue.Empty:
                    continue
                deadline_ms = int(time.time() * 1000) + 30_000
                return self._reply(
                    200,
                    body,
                    {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                    },
                )
            # shutting down: the poller is being stopped too; just hang up
            self.close_connection = True

        def do_POST(self):
            assert api is not None
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            if self.path == f"{PREFIX}/init/error":
                api.init_errors.append((headers, body))
                return self._reply(202, b'{"status":"OK"}')
            parts = self.path[len(PREFIX) :].strip("/").split("/") if self.path.startswith(PREFIX) else []
            if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                with api.lock:
                    waiting = api.outcomes.get(parts[1])
                if waiting is None:
                    return self._reply(400, b'{"errorMessage":"unknown request id"}')
                waiting.put(Outcome(parts[1], parts[2], body, headers, time.monotonic()))
                return self._reply(202, b'{"status":"OK"}')
            return self._reply(404, b'{"errorMessage":"unknown path"}')

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api = RuntimeApi(server=server)
    threading.Thread(target=server.serve_forever, name="runtime-api", daemon=True).start()
    return api
