"""A local stand-in for MetaHub's deployed edge: the CloudFront distribution of template.yaml in front of the
Function URLs of the REAL function binaries (`metahub-registry`, `metahub-token`), on 127.0.0.1 only.

What it takes from template.yaml (so a change there changes what the tests see):
  * the cache behaviours in order, their path patterns and allowed methods -> which origin -> which function
    (an origin's domain is `!GetAtt <Function>Url.FunctionUrl`; the function's binary is its BuildProperties.Binary);
  * each origin's custom headers (the origin secret), with `{{resolve:ssm:NAME}}` read from SSM (moto), as
    CloudFormation resolves it at deploy time;
  * the managed origin request policy: AllViewerExceptHostHeader forwards every viewer header but Host (the
    origin gets the Function URL's domain), every query string and cookie - so Authorization reaches the function;
  * the function timeout (Globals or the function's own Timeout).
  * a viewer-request CloudFront Function's code, run in node on each request (cloudfront-js event shape);
  * a response headers policy's Strict-Transport-Security and X-Content-Type-Options headers;
  * an origin group (a second region, `SecondaryRegistryFunctionUrl`): a GET, HEAD or OPTIONS request the primary
    origin answers with one of the group's failover statuses, or does not answer within the timeout, is sent to the
    secondary origin — the same function binary started with the second region's configuration. Other methods never
    fail over, as on CloudFront. `Pool.stop_function()` stands for a region's function going away.
A policy, a cache policy or an edge function it does not model is refused when the template is read, rather than
silently behaving differently from the deployed edge.

Each request becomes a Function URL event (payload 2.0) handed to an instance of the function through the Runtime API
stand-in of tests/lambda (`runtime_api.py`, started per instance by `lambda_harness`). The instance's answer is turned
back into HTTP as a Function URL does: statusCode, `headers` (a Function URL reads no `multiValueHeaders`), `cookies`
as Set-Cookie, a base64 body decoded, Content-Length of the body (HEAD keeps the function's own Content-Length), a
function error, a timeout or a response over Lambda's 6 MB payload limit as 502. Instances scale out as Lambda does:
a request takes an idle instance or starts a new one (a cold start); `cold_every_request` starts every request on a
fresh instance.

The admin function is no origin: `start_iam_function_url` serves its AWS_IAM Function URL on its own port, where a
pluggable check stands in for Lambda's SigV4 verification (tests/sigv4_standin.py's Verifier, plugged in by
tests/serverless/conftest.py as SIGV4_CALLER).

TLS: the distribution's viewer protocol policy is https-only, and the functions build the token realm as
`https://<X-Forwarded-Host>/token`, so the edge serves HTTPS only, with a certificate for 127.0.0.1 signed by a CA made
when the edge starts (`Edge.ca_file`: Python clients verify against it; skopeo, podman, containerd and Docker pull
with verification off, as from any registry with a private CA). The admin function's own Function URL stays plain
HTTP here: its callers sign the request, and nothing in its answers names its scheme.

Not modelled: caching (every behaviour of the template disables it), compression (every behaviour turns it off).
"""

from __future__ import annotations

import base64
import http.server
import json
import itertools
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from lambda_harness import Function, event, launch_function
from tls_ca import Certificate
from runtime_api import Outcome

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# CloudFront's managed policies the template may name (IDs are fixed by AWS).
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
ALL_VIEWER = "216adef6-5c7f-47e4-b989-5492eafa07d3"
FORWARDS_HOST = {ALL_VIEWER_EXCEPT_HOST: False, ALL_VIEWER: True}

# hop-by-hop headers, never forwarded in either direction
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/xml")


# --------------------------------------------------------------------------------------------- template.yaml


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (`!Ref X` -> {"Ref": X}, `!Sub s` -> {"Fn::Sub": s}, ...)."""


def _cfn_tag(loader: _CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {("Condition" if suffix == "Condition" else f"Fn::{suffix}"): value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


class Evaluator:
    """The intrinsic functions template.yaml uses, for given parameter values. `Fn::GetAtt X.FunctionUrl` of a
    `<Function>Url` resource (what SAM generates for FunctionUrlConfig) is that function's URL."""

    def __init__(self, template: dict, parameters: dict[str, str]):
        self.template = template
        declared = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        if unknown:
            raise ValueError(f"template.yaml declares no parameter {sorted(unknown)}")
        self.parameters = {k: str(v.get("Default", "")) for k, v in declared.items()} | parameters
        self.parameters |= {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::StackName": "metahub-edge-test",
                            "AWS::Partition": "aws", "AWS::NoValue": None}

    @staticmethod
    def function_url(function_id: str) -> str:
        return f"https://{function_id.lower()}.lambda-url.us-east-1.on.aws/"

    def condition(self, name: str) -> bool:
        return bool(self.eval(self.template["Conditions"][name]))

    def eval(self, node):  # noqa: C901 - one branch per intrinsic
        if isinstance(node, list):
            return [self.eval(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: self.eval(v) for k, v in node.items()}
        (key, arg), = node.items()
        if key == "Ref":
            if arg in self.parameters:
                return self.parameters[arg]
            return arg  # a resource's logical id stands for its name
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            name, then, otherwise = arg
            return self.eval(then if self.condition(name) else otherwise)
        if key == "Fn::GetAtt" and arg[1] == "Arn" or key == "Ref" and arg in self.template.get("Resources", {}):
            return arg if key == "Ref" else f"<{arg[0]}.Arn>"
        if key == "Fn::Equals":
            a, b = self.eval(arg)
            return a == b
        if key == "Fn::Not":
            return not self.eval(arg[0])
        if key == "Fn::And":
            return all(self.eval(a) for a in arg)
        if key == "Fn::Or":
            return any(self.eval(a) for a in arg)
        if key == "Fn::Select":
            index, items = arg
            return self.eval(items)[int(self.eval(index))]
        if key == "Fn::Split":
            sep, text = arg
            return self.eval(text).split(sep)
        if key == "Fn::GetAtt":
            resource, attribute = arg
            if attribute == "FunctionUrl" and resource.endswith("Url"):
                return self.function_url(resource.removesuffix("Url"))
            raise NotImplementedError(f"the edge stand-in cannot evaluate !GetAtt {resource}.{attribute}")
        if key == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else (arg[0], {k: self.eval(v) for k, v in arg[1].items()})
            return re.sub(r"\$\{([^}!]+)\}", lambda m: str(extra.get(m.group(1), self.parameters.get(m.group(1), m.group(1)))), text)
        return {key: self.eval(arg)}


@dataclass
class Target:
    """A function behind a Function URL."""

    function_id: str  # logical id in template.yaml
    binary: str  # the bin target: metahub-registry, metahub-token, ...
    domain: str  # <id>.lambda-url.<region>.on.aws: the Host the function sees
    timeout: float  # seconds
    auth_type: str = "NONE"  # of its Function URL: NONE, or AWS_IAM (SigV4-signed callers only)
    region: str = "primary"  # "secondary": the second region's stack of the same template


@dataclass
class Behaviour:
    path_pattern: str  # "*" for the default behaviour
    origin_id: str
    allowed_methods: frozenset[str]
    forwards_host: bool
    viewer_request: str | None = None  # the code of a viewer-request CloudFront Function (cloudfront-js), if any
    response_headers: tuple[tuple[str, str], ...] = ()  # what its response headers policy adds
    failover: "OriginGroup | None" = None  # when origin_id is an origin group

    def matches(self, path: str) -> bool:
        # CloudFront patterns: * any run of characters (slashes too), ? one character; case-sensitive
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.path_pattern)
        return re.fullmatch(regex, path) is not None


@dataclass
class OriginGroup:
    primary: str
    secondary: str
    statuses: frozenset[int]


@dataclass
class Distribution:
    behaviours: list[Behaviour]  # in the template's order, the default last
    origin_headers: dict[str, dict[str, str]]  # origin id -> custom headers, values resolved
    targets: dict[str, Target]  # origin id -> function
    functions: dict[str, Target]  # logical id -> every function with a Function URL (the admin one is no origin)

    def behaviour_for(self, path: str) -> Behaviour:
        return next(b for b in self.behaviours if b.matches(path))


def read_distribution(resolve_ssm: Callable[[str], str], parameters: dict[str, str] | None = None,
                      template: dict | None = None) -> Distribution:
    """The distribution of template.yaml, for `parameters`; `resolve_ssm(name)` reads a `{{resolve:ssm:...}}`."""
    template = template or load_template()
    ev = Evaluator(template, parameters or {})
    resources = template["Resources"]
    config = next(r for r in resources.values() if r["Type"] == "AWS::CloudFront::Distribution")["Properties"]["DistributionConfig"]
    global_timeout = ev.eval(template.get("Globals", {}).get("Function", {}).get("Timeout", 3))

    def resolve(value: str) -> str:
        def one(m: re.Match) -> str:
            name, _, version = m.group(1).partition(":")
            return resolve_ssm(name if not version else f"{name}:{version}")
        return re.sub(r"\{\{resolve:ssm:([^}]+)\}\}", one, value)

    def drop_none(node):
        if isinstance(node, list):
            return [drop_none(n) for n in node if n is not None]
        if isinstance(node, dict):
            return {k: drop_none(v) for k, v in node.items() if v is not None}
        return node

    domains = {}
    for function_id, res in resources.items():
        if res["Type"] == "AWS::Serverless::Function" and "FunctionUrlConfig" in res.get("Properties", {}):
            props = res["Properties"]
            timeout = float(ev.eval(props.get("Timeout", global_timeout)))
            domain = ev.function_url(function_id).split("/")[2]
            domains[domain] = Target(function_id, res["Metadata"]["BuildProperties"]["Binary"], domain, timeout,
                                     props["FunctionUrlConfig"]["AuthType"])

    # The second region's stack is this template too: its registry Function URL (a parameter) runs the same binary.
    secondary_url = ev.parameters.get("SecondaryRegistryFunctionUrl") or ""
    if secondary_url:
        registry = next(t for t in domains.values() if t.function_id == "RegistryFunction")
        domains[secondary_url.split("/")[2]] = Target(registry.function_id, registry.binary, secondary_url.split("/")[2],
                                                       registry.timeout, registry.auth_type, "secondary")

    targets, origin_headers = {}, {}
    for origin in drop_none(ev.eval(config["Origins"])):
        domain = origin["DomainName"]
        if domain not in domains:
            raise NotImplementedError(f"origin {origin['Id']}: {domain} is not a Function URL of this template")
        targets[origin["Id"]] = domains[domain]
        origin_headers[origin["Id"]] = {h["HeaderName"]: resolve(h["HeaderValue"]) for h in origin.get("OriginCustomHeaders", [])}
    groups = {}
    for group in (drop_none(ev.eval(config.get("OriginGroups"))) or {}).get("Items", []):
        primary, secondary = (m["OriginId"] for m in group["Members"]["Items"])
        groups[group["Id"]] = OriginGroup(primary, secondary, frozenset(int(c) for c in group["FailoverCriteria"]["StatusCodes"]["Items"]))

    def response_headers(policy_id) -> tuple[tuple[str, str], ...]:
        if policy_id is None:
            return ()
        policy = resources.get(policy_id, {})
        if policy.get("Type") != "AWS::CloudFront::ResponseHeadersPolicy":
            raise NotImplementedError(f"response headers policy {policy_id} is not modelled")
        config_ = drop_none(ev.eval(policy["Properties"]["ResponseHeadersPolicyConfig"]))
        security = config_.get("SecurityHeadersConfig", {})
        if set(config_) - {"Name", "Comment", "SecurityHeadersConfig"} or set(security) - {"StrictTransportSecurity", "ContentTypeOptions"}:
            raise NotImplementedError(f"{policy_id}: only HSTS and X-Content-Type-Options are modelled")
        out = []
        if "StrictTransportSecurity" in security:
            hsts = security["StrictTransportSecurity"]
            value = f"max-age={hsts['AccessControlMaxAgeSec']}" + ("; includeSubDomains" if hsts.get("IncludeSubdomains") else "") \
                + ("; preload" if hsts.get("Preload") else "")
            out.append(("Strict-Transport-Security", value))
        if "ContentTypeOptions" in security:
            out.append(("X-Content-Type-Options", "nosniff"))
        return tuple(out)

    def behaviour(raw: dict, pattern: str) -> Behaviour:
        if raw.get("CachePolicyId") != CACHING_DISABLED:
            raise NotImplementedError(f"{pattern}: only the CachingDisabled cache policy is modelled")
        policy = raw.get("OriginRequestPolicyId")
        if policy not in FORWARDS_HOST:
            raise NotImplementedError(f"{pattern}: origin request policy {policy} is not modelled")
        if raw.get("Compress", False):
            raise NotImplementedError(f"{pattern}: compression is not modelled (and would break digests)")
        if raw.get("LambdaFunctionAssociations"):
            raise NotImplementedError(f"{pattern}: Lambda@Edge is not modelled")
        code = None
        for association in raw.get("FunctionAssociations", []):
            arn = association.get("FunctionARN")
            function_id = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
            function = resources.get(function_id or "", {})
            if association.get("EventType") != "viewer-request" or function.get("Type") != "AWS::CloudFront::Function":
                raise NotImplementedError(f"{pattern}: only viewer-request CloudFront Functions are modelled: {association}")
            code = function["Properties"]["FunctionCode"]
        target = ev.eval(raw["TargetOriginId"])
        return Behaviour(pattern, target, frozenset(ev.eval(raw["AllowedMethods"])), FORWARDS_HOST[policy], code,
                         response_headers(ev.eval(raw.get("ResponseHeadersPolicyId"))), groups.get(target))

    behaviours = [behaviour(b, b["PathPattern"]) for b in config.get("CacheBehaviors", [])]
    behaviours.append(behaviour(config["DefaultCacheBehavior"], "*"))
    return Distribution(behaviours, origin_headers, targets, {t.function_id: t for t in domains.values()})


# --------------------------------------------------------------------------------------------- function instances


class Pool:
    """The instances of one function. A request takes an idle instance or starts one (a cold start, as Lambda scales
    out); with `cold_every_request`, every request starts a fresh instance that is stopped after it. With
    `max_instances`, at most that many run at once and a request waits for one to be free (what this machine can run
    of the hundreds Lambda would start: several instances, each with its own caches, not Lambda's latency)."""

    def __init__(self, target: Target, start: Callable[[str], Function]):
        self.target = target
        self._start = start
        self._idle: list[Function] = []
        self._all: list[Function] = []
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self.max_instances: int | None = None
        self._running = 0
        self._names = itertools.count(1)
        self.cold_every_request = False
        self.cold_starts = 0
        self.invocations = 0
        self.stopped = False  # the function is gone (a region's outage): every invocation fails
        self.max_concurrent = 0
        self._busy = 0

    def _take(self) -> tuple[Function, bool]:
        with self._lock:
            self.invocations += 1
            while True:
                while self._idle and not self.cold_every_request:
                    fn = self._idle.pop()
                    if fn.proc.alive():
                        self._busy += 1
                        self.max_concurrent = max(self.max_concurrent, self._busy)
                        return fn, False
                    self._running -= 1
                if self.max_instances is None or self._running < self.max_instances:
                    break
                self._freed.wait(timeout=1)
            self._busy += 1
            self._running += 1
            self.max_concurrent = max(self.max_concurrent, self._busy)
            self.cold_starts += 1
            name = f"{self.target.binary}-{next(self._names)}"
        try:
            fn = self._start(name)
        except BaseException:
            with self._lock:
                self._busy -= 1
                self._running -= 1
                self._freed.notify()
            raise
        with self._lock:
            self._all.append(fn)
        return fn, True

    def _give_back(self, fn: Function, healthy: bool) -> None:
        with self._lock:
            self._busy -= 1
            self._freed.notify()
            if healthy and not self.cold_every_request:
                self._idle.append(fn)
                return
            self._running -= 1
        fn.stop()

    def stop_function(self) -> None:
        """The function goes away, as in a region's outage: running instances are stopped, no new one starts, and
        every invocation fails (the Function URL answers 5xx, or nothing)."""
        self.stopped = True
        self.stop()

    def invoke(self, ev: dict) -> tuple[Outcome | None, bool]:
        """The function's outcome (None on a timeout) and whether this was a cold start."""
        if self.stopped:
            with self._lock:
                self.invocations += 1
            return None, False
        fn, cold = self._take()
        try:
            request_id = fn.runtime.submit(ev)
            try:
                outcome = fn.runtime.wait(request_id, timeout=self.target.timeout + (15 if cold else 0))
            except AssertionError:
                outcome = None  # Lambda stops an instance that overran its timeout
            fn.invocations += 1
            self._give_back(fn, outcome is not None and outcome.kind == "response" and fn.proc.alive())
            return outcome, cold
        except BaseException:
            self._give_back(fn, False)
            raise

    def instances(self) -> int:
        with self._lock:
            return len(self._all)

    def stop_idle(self) -> None:
        """Every idle instance goes away: the next request is a cold start, as after Lambda reclaims them."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._running -= len(idle)
        for fn in idle:
            fn.stop()

    def stop(self) -> None:
        self.stop_idle()
        with self._lock:
            everything = list(self._all)
        for fn in everything:
            fn.stop()


# --------------------------------------------------------------------------------------------- the edge


@dataclass
class EdgeResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Edge:
    distribution: Distribution
    pools: dict[str, Pool]  # origin id -> instances
    server: http.server.ThreadingHTTPServer | None = None
    ca_file: Path | None = None  # the CA that signed the edge's certificate (for clients that verify)
    log: list[tuple[str, str, int, str, bool]] = field(default_factory=list)  # (method, path, status, origin, cold)
    failed_over: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, primary's status)
    on_request: list[Callable[["Edge", str], None]] = field(default_factory=list)  # called with each origin id served

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pool(self, binary: str, region: str = "primary") -> Pool:
        return next(p for p in self.pools.values() if p.target.binary == binary and p.target.region == region)

    def set_cold_every_request(self, cold: bool) -> None:
        for p in self.pools.values():
            p.cold_every_request = cold
            if cold:
                p.stop_idle()

    def stop_idle(self) -> None:
        for p in self.pools.values():
            p.stop_idle()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for p in {id(p): p for p in self.pools.values()}.values():
            p.stop()

    # -- one request

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, client_ip: str) -> EdgeResponse:
        behaviour = self.distribution.behaviour_for(target.partition("?")[0])
        if method not in behaviour.allowed_methods:
            refusal = b"This distribution is not configured to allow the HTTP request method that was used for this request."
            return EdgeResponse(403, [("Content-Type", "text/html"), ("Server", "CloudFront"),
                                      ("Content-Length", str(len(refusal)))], refusal)
        if behaviour.viewer_request:
            headers = run_viewer_request(behaviour.viewer_request, method, target, headers, client_ip)
        group = behaviour.failover
        origin = group.primary if group else behaviour.origin_id
        response, cold = self.forward(method, target, headers, body, client_ip, behaviour, origin)
        if group and method in ("GET", "HEAD", "OPTIONS") and response.status in group.statuses | {502, 504}:
            # CloudFront's origin failover: a failover status, no connection or no answer in time (a 502/504 here)
            self.failed_over.append((method, target, response.status))
            origin = group.secondary
            response, cold = self.forward(method, target, headers, body, client_ip, behaviour, origin)
        response.headers += [("Via", "1.1 edge-stand-in.cloudfront.net (CloudFront)"), ("X-Cache", "Miss from cloudfront"),
                             ("X-Amz-Cf-Id", base64.b64encode(uuid.uuid4().bytes).decode()), *behaviour.response_headers]
        self.log.append((method, target, response.status, origin, cold))
        for hook in list(self.on_request):
            hook(self, origin)
        return response

    def forward(self, method, target, headers, body, client_ip, behaviour, origin) -> tuple[EdgeResponse, bool]:
        forwarded = self.origin_request_headers(headers, client_ip, behaviour, origin)
        ev = function_url_event(method, target, forwarded, body, client_ip, self.distribution.targets[origin])
        outcome, cold = self.pools[origin].invoke(ev)
        return function_url_response(method, outcome), cold

    def origin_request_headers(self, headers: list[tuple[str, str]], client_ip: str, behaviour: Behaviour, origin: str) -> dict[str, str]:
        """The viewer's headers as CloudFront sends them to the origin: the policy's selection, its own headers, and
        the origin's custom headers (which overwrite a viewer header of the same name)."""
        forwarded = viewer_headers(headers, keep_host=behaviour.forwards_host)
        forwarded["via"] = "2.0 edge-stand-in.cloudfront.net (CloudFront)"
        forwarded["x-amz-cf-id"] = base64.b64encode(uuid.uuid4().bytes).decode()
        previous = forwarded.get("x-forwarded-for")
        forwarded["x-forwarded-for"] = f"{previous}, {client_ip}" if previous else client_ip
        for name, value in self.distribution.origin_headers[origin].items():
            forwarded[name.lower()] = value
        return forwarded


_RUN_CLOUDFRONT_FUNCTION = """
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const handler = new Function(input.code + "\\nreturn handler;")();
process.stdout.write(JSON.stringify(handler(input.event)));
"""


def run_viewer_request(code: str, method: str, target: str, headers: list[tuple[str, str]], client_ip: str) -> list[tuple[str, str]]:
    """The viewer's headers after a viewer-request CloudFront Function (cloudfront-js event shape), run in node."""
    joined: dict[str, str] = {}
    for name, value in headers:
        joined[name.lower()] = f"{joined[name.lower()]},{value}" if name.lower() in joined else value
    event_ = {"version": "1.0", "context": {"eventType": "viewer-request"}, "viewer": {"ip": client_ip},
              "request": {"method": method, "uri": target.partition("?")[0], "querystring": {}, "cookies": {},
                          "headers": {k: {"value": v} for k, v in joined.items()}}}
    out = subprocess.run(["node", "-e", _RUN_CLOUDFRONT_FUNCTION], input=json.dumps({"code": code, "event": event_}).encode(),
                         capture_output=True, timeout=30, check=True)
    request = json.loads(out.stdout)
    return [(k, v["value"]) for k, v in request.get("headers", {}).items()]


def viewer_headers(headers: list[tuple[str, str]], keep_host: bool) -> dict[str, str]:
    """Lower-case names, repeated headers joined with commas (as a Function URL joins them), no hop-by-hop ones."""
    out: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or (lower == "host" and not keep_host):
            continue
        out[lower] = f"{out[lower]},{value}" if lower in out else value
    return out


def function_url_event(method: str, target: str, headers: dict[str, str], body: bytes, client_ip: str, function: Target) -> dict:
    """The payload 2.0 event a Function URL hands `function` for this request."""
    path, _, query = target.partition("?")
    headers = dict(headers)
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    headers.setdefault("host", function.domain)
    headers["x-forwarded-proto"] = "https"
    headers["x-forwarded-port"] = "443"
    headers["x-amzn-trace-id"] = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    content_type = headers.get("content-type", "")
    b64 = bool(body) and not (content_type.startswith(TEXT_TYPES) and _is_utf8(body))
    ev = event(method, path, query=query, body=body or None, b64=b64, origin=False)
    ev["headers"] = headers
    if body:
        headers["content-length"] = str(len(body))
    if not query:
        ev.pop("queryStringParameters", None)
    if cookies:
        ev["cookies"] = cookies
    http_ctx = ev["requestContext"]["http"]
    http_ctx["sourceIp"] = client_ip
    http_ctx["userAgent"] = headers.get("user-agent", "")
    ev["requestContext"]["domainName"] = function.domain
    ev["requestContext"]["domainPrefix"] = function.domain.split(".")[0]
    ev["requestContext"]["requestId"] = str(uuid.uuid4())
    ev["requestContext"]["timeEpoch"] = int(time.time() * 1000)
    return ev


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# Lambda's limit on a synchronous invocation's response payload (the JSON the function posts, escaping included)
MAX_RESPONSE_PAYLOAD = 6 * 1024 * 1024


def function_url_response(method: str, outcome: Outcome | None) -> EdgeResponse:
    """What a Function URL makes of the payload a function posted back (payload format 2.0)."""
    if outcome is None or outcome.kind != "response" or len(outcome.body) > MAX_RESPONSE_PAYLOAD:
        # a function error, a crash, a timeout or an answer over the payload limit
        return EdgeResponse(502, [("Content-Type", "application/json")], b'{"Message":"Internal Server Error"}')
    try:
        payload = json.loads(outcome.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or "statusCode" not in payload:
        # not the response format: a Function URL returns the payload itself as a 200 JSON body
        return EdgeResponse(200, [("Content-Type", "application/json")], outcome.body)
    raw = payload.get("body") or ""
    body = base64.b64decode(raw) if payload.get("isBase64Encoded") else raw.encode()
    headers: list[tuple[str, str]] = []
    declared_length = None
    for name, value in (payload.get("headers") or {}).items():
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "content-length":
            declared_length = value
            continue
        headers.append((name, value))
    headers += [("Set-Cookie", c) for c in payload.get("cookies") or []]
    if method == "HEAD":
        headers.append(("Content-Length", declared_length if declared_length is not None else "0"))
        body = b""
    else:
        headers.append(("Content-Length", str(len(body))))
    headers.append(("X-Amzn-RequestId", str(uuid.uuid4())))
    return EdgeResponse(int(payload["statusCode"]), headers, body)


def serve_http(handle: Callable[[str, str, list[tuple[str, str]], bytes, str], EdgeResponse], name: str,
               certificate: Certificate | None = None) -> http.server.ThreadingHTTPServer:
    """An HTTP/1.1 server on a free 127.0.0.1 port answering every request with `handle(method, target, headers,
    body, client_ip)`; HTTPS with `certificate`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the callers keep their own log
            pass

        def setup(self):
            if isinstance(self.request, ssl.SSLSocket):
                # the handshake runs here, in the connection's own thread, not in the accepting one: a client that
                # stalls or refuses the certificate holds up no one else
                self.request.settimeout(60)
                self.request.do_handshake()
                self.request.settimeout(None)
            super().setup()

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _any(self):
            body = self._read_body()
            r = handle(self.command, self.path, list(self.headers.items()), body, self.client_address[0])
            try:
                self.send_response(r.status)
                for k, v in r.headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD" and r.body:
                    self.wfile.write(r.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _any

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
                return  # a client that gave up on the handshake or the connection: nothing to report
            super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # CloudFront's floor for viewers
        context.load_cert_chain(certificate.cert_file, certificate.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def start_edge(distribution: Distribution, start_instance: Callable[[str, str], Function], certificate: Certificate) -> Edge:
    """Serve `distribution` over HTTPS with `certificate` on a free 127.0.0.1 port. `start_instance(binary, name)`
    starts one instance."""
    pools = {}
    by_binary: dict[tuple[str, str], Pool] = {}
    for origin, target in distribution.targets.items():
        key = (target.binary, target.region)
        if key not in by_binary:
            if target.region == "primary":
                by_binary[key] = Pool(target, lambda name, b=target.binary: start_instance(b, name))
            else:  # the second region's instances: start_instance(binary, name, region=...)
                by_binary[key] = Pool(target, lambda name, b=target.binary, r=target.region: start_instance(b, f"{name}-{r}", region=r))
        pools[origin] = by_binary[key]
    edge = Edge(distribution, pools, ca_file=certificate.ca_file)
    edge.server = serve_http(edge.handle, "edge", certificate)
    return edge


@dataclass
class IamFunctionUrl:
    """An `AWS_IAM` Function URL (the admin function's): reached directly with SigV4-signed requests, never through
    the edge. `caller_of(method, target, headers, body, url)` stands in for Lambda's signature check: the caller's ARN
    for a correctly signed request, None otherwise (403, and the function is never invoked, as on AWS). The tests
    plug tests/sigv4_standin.py's Verifier in (tests/serverless/conftest.py, SIGV4_CALLER)."""

    pool: Pool
    caller_of: Callable[[str, str, list[tuple[str, str]], bytes, str], str | None]
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, client_ip: str) -> EdgeResponse:
        caller = self.caller_of(method, target, headers, body, self.url)
        if caller is None:
            return EdgeResponse(403, [("Content-Type", "application/json"), ("Content-Length", "23")], b'{"Message":"Forbidden"}')
        ev = function_url_event(method, target, viewer_headers(headers, keep_host=True), body, client_ip, self.pool.target)
        account = caller.split(":")[4] if caller.count(":") >= 5 else ""
        ev["requestContext"]["authorizer"] = {"iam": {"accessKey": "", "accountId": account, "callerId": "",
                                                      "userArn": caller, "userId": ""}}
        outcome, _ = self.pool.invoke(ev)
        return function_url_response(method, outcome)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.pool.stop()


def start_iam_function_url(function: Target, start_instance: Callable[[str, str], Function], caller_of) -> IamFunctionUrl:
    if function.auth_type != "AWS_IAM":
        raise ValueError(f"{function.function_id}'s Function URL is {function.auth_type}, not AWS_IAM")
    url = IamFunctionUrl(Pool(function, lambda name: start_instance(function.binary, name)), caller_of)
    url.server = serve_http(url.handle, f"function-url-{function.function_id}")
    return url
