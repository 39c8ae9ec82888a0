"""Helpers of the Lambda handler tests (imported by conftest.py and the tests; kept out of conftest.py so that
its name cannot clash with tests/e2e/conftest.py when both directories run in one pytest session).

The REAL function binaries (`metahub-registry`, `metahub-token`, `metahub-admin`) run as Lambda runs a custom
runtime: `AWS_LAMBDA_RUNTIME_API` points at `runtime_api.py`, which hands them Function URL events (payload format
2.0, as CloudFront forwards them) and collects the responses they post back.
"""

from __future__ import annotations

import atexit
import base64
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from runtime_api import Outcome, RuntimeApi, start_runtime_api  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import iam_check  # noqa: E402  (every instance's AWS calls go through a recorder, checked against its role)

METAHUB_BIN = os.environ.get("METAHUB_BIN", str(ROOT / "target" / "debug" / "metahub"))
BIN_DIR = Path(os.environ.get("METAHUB_LAMBDA_BIN_DIR", str(Path(METAHUB_BIN).parent)))
START_TIMEOUT = 30

PUBLIC_URL = "https://metahub.example.test"
SERVICE = "metahub-lambda-test"
TABLE = "metahub-lambda"
ORIGIN_SECRET = "origin-verify-0123456789abcdef"
SIGNING_KEY_PARAM = "/metahub/test/signing-key"
ORIGIN_SECRET_PARAM = "/metahub/test/origin-secret"
UPSTREAM_CREDENTIALS_PARAM = "/metahub/test/upstream-credentials"
MACHINE_TYPE = ("skylake", ["cpu:skylake"])
ADMIN_ARN = "arn:aws:sts::123456789012:assumed-role/metahub-operators/ops"
LOGIN, PASSWORD = "m-skylake", "pw-skylake-secret"

EVENT_TEMPLATE = json.loads((HERE / "events" / "function_url.json").read_text())

# binary -> {"init": s, "first_answer": s}, printed at the end of the session
TIMINGS: dict[str, dict[str, float]] = {}

_PROCS: list["Proc"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A background process in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str]):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        _PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"<no log: {e}>"


def stop_all() -> None:
    for p in reversed(_PROCS):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 - one stubborn process must not keep the others alive
            print(f"stopping {p.name} (pid {p.popen.pid}) failed: {e!r}", file=sys.stderr)


atexit.register(stop_all)


def wait_until(check, what: str, timeout: float = START_TIMEOUT, proc: Proc | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.tail()}")
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - "not yet"
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last: {last!r})" + (f"\n{proc.tail()}" if proc else ""))


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process environment without any METAHUB_/AWS_ setting of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAHUB_", "AWS_", "RUST_LOG"))}
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {' '.join(cmd)}\n{p.stdout.decode(errors='replace')}\n{p.stderr.decode(errors='replace')}")
    return p


# ---------------------------------------------------------------------------------------------
# components



@dataclass
class Upstream:
    url: str
    proc: Proc



@dataclass
class Moto:
    port: int
    proc: Proc

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_SESSION_TOKEN": "test",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }



@dataclass
class Seeded:
    signing_key: bytes



@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; multiValueHeaders joined with ", "
    body: bytes
    payload: dict  # what the binary posted, as is

    def json(self):
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


def event(
    method: str,
    path: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    b64: bool = False,
    origin: bool = True,
    iam_caller: str | None = None,
) -> dict:
    """A Function URL event (payload 2.0) as CloudFront forwards a client's request; with `iam_caller`, as an
    `AWS_IAM` Function URL passes a SigV4-verified request (the admin function)."""
    ev = copy.deepcopy(EVENT_TEMPLATE)
    ev["rawPath"] = path
    ev["rawQueryString"] = query
    if query:
        ev["queryStringParameters"] = {k: ",".join(v) for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
    ev["requestContext"]["http"]["method"] = method
    ev["requestContext"]["http"]["path"] = path
    if origin:
        ev["headers"]["x-origin-verify"] = ORIGIN_SECRET
    if iam_caller:
        ev["requestContext"]["authorizer"] = {
            "iam": {"accessKey": "ASIAEXAMPLE", "accountId": "123456789012", "callerId": "AROAEXAMPLE:ops",
                    "userArn": iam_caller, "userId": "AROAEXAMPLE:ops"}
        }
    for k, v in (headers or {}).items():
        ev["headers"][k.lower()] = v
    if body is not None:
        ev["body"] = base64.b64encode(body).decode() if b64 else body.decode()
        ev["isBase64Encoded"] = b64
        ev["headers"].setdefault("content-length", str(len(body)))
    return ev


def parse_outcome(outcome: Outcome) -> Response:
    assert outcome.kind == "response", f"the function reported an error: {outcome.body!r}"
    payload = outcome.json()
    headers = {k.lower(): v for k, v in (payload.get("headers") or {}).items()}
    for k, values in (payload.get("multiValueHeaders") or {}).items():
        headers.setdefault(k.lower(), ", ".join(values))
    raw = payload.get("body") or ""
    body = base64.b64decode(raw) if payload.get("isBase64Encoded") else raw.encode()
    return Response(payload["statusCode"], headers, body, payload)


@dataclass
class Function:
    binary: str
    runtime: RuntimeApi
    proc: Proc
    invocations: int = 0
    first: Response | None = None
    recorder: "iam_check.Recorder | None" = None  # its AWS calls, for the IAM check

    def invoke(self, ev: dict, timeout: float = 60) -> Response:
        assert self.proc.alive(), f"{self.binary} exited with {self.proc.popen.returncode}:\n{self.proc.tail()}"
        self.invocations += 1
        return parse_outcome(self.runtime.invoke(ev, timeout))

    def request(self, method: str, path: str, **kw) -> Response:
        return self.invoke(event(method, path, **kw))

    def stop(self) -> None:
        self.proc.stop()
        self.runtime.stop()
        if self.recorder is not None:
            self.recorder.stop()


def function_env(runtime: RuntimeApi, binary: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment Lambda gives a custom runtime (the parts lambda_runtime reads), plus `extra`."""
    return clean_env(
        {
            "AWS_LAMBDA_RUNTIME_API": runtime.address,
            "AWS_LAMBDA_FUNCTION_NAME": binary,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{binary}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2025/02/04/[1]0123456789abcdef",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            "RUST_BACKTRACE": "1",
            **extra,
        }
    )


def launch_function(workdir: Path, binary: str, env: dict[str, str], name: str | None = None, first: dict | None = None) -> tuple[Function, str | None]:
    """Start `binary` against a fresh runtime stand-in, as Lambda starts an instance; with `first`, that event is
    queued before the process starts (a cold invoke) and its request id returned."""
    path = BIN_DIR / binary
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: build it (cargo build --workspace --bins) or set METAHUB_LAMBDA_BIN_DIR")
    runtime = start_runtime_api()
    recorder = None
    if binary == "metahub-token":
        # template.yaml gives the token function no upstream (it contacts none), so no upstream credentials either
        env = {k: v for k, v in env.items() if k != "METAHUB_UPSTREAM_CREDENTIALS_PARAM"}
    if env.get("AWS_ENDPOINT_URL") and os.environ.get("METAHUB_IAM_CHECK", "1") != "0":
        # Between the instance and moto: a proxy that records every AWS call for the IAM check (tests/iam_check.py;
        # METAHUB_IAM_CHECK=0 leaves it out, for benchmarks).
        parameters, why_not = iam_check.template_parameters(binary, env)
        recorder = iam_check.start_recorder(name or binary, binary, env["AWS_ENDPOINT_URL"], parameters, why_not)
        env = {**env, "AWS_ENDPOINT_URL": recorder.endpoint}
    request_id = runtime.submit(first) if first is not None else None
    proc = Proc(name or binary, [str(path)], workdir, function_env(runtime, binary, env))
    return Function(binary, runtime, proc, recorder=recorder), request_id


def start_function(workdir: Path, binary: str, env: dict[str, str], first: dict | None, name: str | None = None) -> Function:
    """Start `binary` against a fresh runtime stand-in; with `first`, hand it that event right away and time the
    start-up up to its answer (what a cold start costs, less the download of the code)."""
    fn, request_id = launch_function(workdir, binary, env, name, first)
    runtime, proc = fn.runtime, fn.proc
    if request_id is not None:
        outcome = runtime.wait(request_id, timeout=START_TIMEOUT)
        fn.first = parse_outcome(outcome)
        fn.invocations = 1
        TIMINGS[binary] = {"init": (runtime.first_poll or outcome.posted_at) - proc.started, "first_answer": outcome.posted_at - proc.started}
    return fn


def full_env(moto: Moto, upstream: Upstream) -> dict[str, str]:
    """Every setting a deployed registry/token function gets (see template.yaml), secrets through SSM."""
    return {
        **moto.env,
        "METAHUB_STORE": f"dynamodb:{TABLE}",
        "METAHUB_PUBLIC_URL": PUBLIC_URL + "/",
        "METAHUB_SERVICE": SERVICE,
        "METAHUB_UPSTREAM": upstream.url,
        "METAHUB_TOKEN_TTL": "300",
        "METAHUB_TAG_TTL": "1s",
        "METAHUB_SIGNING_KEY_PARAM": SIGNING_KEY_PARAM,
        "METAHUB_ORIGIN_SECRET_PARAM": ORIGIN_SECRET_PARAM,
        "METAHUB_UPSTREAM_CREDENTIALS_PARAM": UPSTREAM_CREDENTIALS_PARAM,
    }



def admin_env(moto: Moto, upstream: Upstream) -> dict[str, str]:
    """What template.yaml gives the admin function: the store, the upstream and its credentials (for /admin/explain
    and /admin/matrix of private images), no token secrets (it issues no tokens)."""
    env = full_env(moto, upstream)
    for secret in ("METAHUB_SIGNING_KEY_PARAM", "METAHUB_ORIGIN_SECRET_PARAM"):
        env.pop(secret)
    return env


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def seed_parameters(endpoint: str, origin_secret: str = ORIGIN_SECRET) -> bytes:
    """The SSM parameters the functions read (see template.yaml), in moto at `endpoint`; returns the signing key."""
    import boto3

    ssm = boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    key = os.urandom(32)
    ssm.put_parameter(Name=SIGNING_KEY_PARAM, Type="SecureString", Value=base64.b64encode(key).decode(), Overwrite=True)
    # CloudFront reads the origin secret through {{resolve:ssm:...}}, which takes plain String parameters
    ssm.put_parameter(Name=ORIGIN_SECRET_PARAM, Type="String", Value=origin_secret, Overwrite=True)
    # the test upstream is open: the credentials are read and held, never challenged for
    ssm.put_parameter(Name=UPSTREAM_CREDENTIALS_PARAM, Type="SecureString", Value="upstream-user:upstream:pass", Overwrite=True)
    return key


def ssm_value(endpoint: str, name: str) -> str:
    """One parameter's value from moto, as CloudFormation's {{resolve:ssm:NAME[:VERSION]}} reads it."""
    import boto3

    ssm = boto3.client("ssm", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
