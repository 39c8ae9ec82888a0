"""The IAM check moto cannot do: every AWS call a function makes in the tests, evaluated against that function's role
policy as template.yaml renders it.

Three parts, plain code:
  * `render_roles(parameters)`: template.yaml's roles for given parameter values (`!Sub`, `!Ref`, `!If`, `!GetAtt`
    of the log groups resolved), and which function binary assumes which role;
  * `evaluate(statements, request)`: IAM's decision for one request (action, resource ARN, condition keys): an
    explicit Deny wins, else an Allow, else the implicit deny. The shapes the template uses: Action/NotAction,
    Resource/NotResource with `*`/`?` wildcards, String* operators with `ForAllValues:`/`ForAnyValue:` and
    `...IfExists`, Bool, Null;
  * `Recorder`: a recording proxy between one function instance and moto. The instance's AWS_ENDPOINT_URL points at
    it; each call is parsed (DynamoDB and SSM JSON protocols: action, table, index, key condition, partition keys,
    parameter names), kept, and forwarded unchanged.

`authorize(call, role)` turns a recorded call into the requests IAM authorises (a TransactWriteItems is one request
per element, a GetParameters one per name) and evaluates each. tests/lambda and tests/serverless start every
function instance behind a Recorder (`lambda_harness.launch_function`) and fail a test whose instances made a call
their role does not allow (the `iam_check` fixture in each conftest).
"""

from __future__ import annotations

import fnmatch
import http.client
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
ACCOUNT = "123456789012"  # moto's default account

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


_NO_VALUE = object()


class Renderer:
    """Evaluates the intrinsic functions of a template for given parameter values, as CloudFormation does."""

    def __init__(self, template: dict, parameters: dict[str, str], region: str = "us-east-1",
                 stack: str = "metahub-test"):
        declared = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        if unknown:
            raise ValueError(f"template.yaml declares no parameter {sorted(unknown)}")
        self.template = template
        self.values = {k: str(v.get("Default", "")) for k, v in declared.items()} | {k: str(v) for k, v in parameters.items()}
        self.values |= {"AWS::Region": region, "AWS::AccountId": ACCOUNT, "AWS::StackName": stack,
                        "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
        self.region = region

    def condition(self, name: str) -> bool:
        return bool(self.render(self.template["Conditions"][name]))

    def physical_name(self, logical_id: str) -> str:
        res = self.template["Resources"][logical_id]
        props = res.get("Properties", {})
        for key in ("TableName", "LogGroupName", "Name", "FunctionName"):
            if key in props:
                return self.render(props[key])
        return f"{self.values['AWS::StackName']}-{logical_id}"

    def ref(self, name: str):
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.values:
            return self.values[name]
        if name in self.template["Resources"]:
            return self.physical_name(name)
        raise KeyError(f"!Ref {name}: neither a parameter nor a resource")

    def get_att(self, logical_id: str, attribute: str):
        res = self.template["Resources"][logical_id]
        kind, name = res["Type"], self.physical_name(logical_id)
        if kind == "AWS::Logs::LogGroup" and attribute == "Arn":
            return f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{name}:*"
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return f"arn:aws:dynamodb:{self.region}:{ACCOUNT}:table/{name}"
        if kind == "AWS::DynamoDB::GlobalTable" and attribute == "Arn":
            return f"arn:aws:dynamodb:{self.region}:{ACCOUNT}:table/{name}"
        if kind == "AWS::IAM::Role" and attribute == "Arn":
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
        return f"<{logical_id}.{attribute}>"

    def sub(self, text: str, extra: dict) -> str:
        def one(m: re.Match) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in extra:
                return str(extra[name])
            if "." in name and name.split(".", 1)[0] in self.template["Resources"]:
                return str(self.get_att(*name.split(".", 1)))
            value = self.ref(name)
            if value is _NO_VALUE:
                raise ValueError(f"!Sub of AWS::NoValue in {text!r}")
            return str(value)
        return re.sub(r"\$\{([^}]+)\}", one, text)

    def render(self, node):  # noqa: C901 - one branch per intrinsic
        if isinstance(node, list):
            out = [self.render(n) for n in node]
            return [v for v in out if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.render(then if self.condition(name) else otherwise)
            if key == "Fn::Equals":
                a, b = (self.render(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.render(arg[0])
            if key == "Fn::And":
                return all(self.render(a) for a in arg)
            if key == "Fn::Or":
                return any(self.render(a) for a in arg)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, variables = arg
                return self.sub(text, {k: self.render(v) for k, v in variables.items()})
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(i) for i in self.render(items))
            if key == "Fn::Select":
                index, items = arg
                return self.render(items)[int(self.render(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.render(text)).split(sep)
            if key == "Fn::GetAtt":
                return self.get_att(*arg)
        out = {k: self.render(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}


@dataclass
class Role:
    logical_id: str
    statements: list[dict]


def render_roles(parameters: dict[str, str], region: str = "us-east-1", template: dict | None = None) -> dict[str, Role]:
    """binary (`metahub-registry`, ...) -> the role its function assumes, policies rendered for `parameters`."""
    template = template or load_template()
    r = Renderer(template, parameters, region)
    roles: dict[str, Role] = {}
    for logical_id, res in template["Resources"].items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        role_ref = res["Properties"]["Role"]
        role_id = role_ref["Fn::GetAtt"][0]
        role = template["Resources"][role_id]
        statements: list[dict] = []
        for policy in r.render(role["Properties"].get("Policies", [])):
            st = policy["PolicyDocument"]["Statement"]
            statements += st if isinstance(st, list) else [st]
        roles[res["Metadata"]["BuildProperties"]["Binary"]] = Role(role_id, statements)
    return roles


def table_key_schema(template: dict | None = None) -> dict[str | None, str]:
    """Partition key attribute of the table (None) and of each global secondary index (by name)."""
    template = template or load_template()
    table = next(res for res in template["Resources"].values() if res["Type"] in ("AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable"))
    props = table["Properties"]
    hash_of = lambda schema: next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")  # noqa: E731
    schema: dict[str | None, str] = {None: hash_of(props["KeySchema"])}
    for gsi in props.get("GlobalSecondaryIndexes", []):
        schema[gsi["IndexName"]] = hash_of(gsi["KeySchema"])
    return schema


# --------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Request:
    """What IAM authorises: one action on one resource, with the request's condition keys."""

    action: str
    resource: str
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def keys(self) -> dict[str, tuple[str, ...]]:
        return {k.lower(): v for k, v in self.context}

    def __str__(self) -> str:
        ctx = ", ".join(f"{k}={list(v)}" for k, v in self.context)
        return f"{self.action} on {self.resource}" + (f" ({ctx})" if ctx else "")


@dataclass
class Decision:
    allowed: bool
    reason: str


def _wild(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _string_test(op: str):
    base = op.removesuffix("IfExists")
    tests = {
        "StringEquals": lambda p, v: p == v,
        "StringNotEquals": lambda p, v: p != v,
        "StringEqualsIgnoreCase": lambda p, v: p.lower() == v.lower(),
        "StringNotEqualsIgnoreCase": lambda p, v: p.lower() != v.lower(),
        "StringLike": lambda p, v: _wild(p, v),
        "StringNotLike": lambda p, v: not _wild(p, v),
        "ArnEquals": lambda p, v: p == v,
        "ArnLike": lambda p, v: _wild(p, v),
        "Bool": lambda p, v: str(p).lower() == str(v).lower(),
    }
    if base not in tests:
        raise NotImplementedError(f"condition operator {op} is not modelled by tests/iam_check.py")
    return base, tests[base]


def _condition_holds(op: str, key: str, patterns: list, request: Request) -> bool:
    """One key of one condition operator (IAM's rules for multivalued keys and missing keys)."""
    values = request.keys().get(key.lower())
    if op == "Null":
        return (values is None) == (str(patterns[0]).lower() == "true")
    qualifier, _, op = op.rpartition(":")
    if_exists = op.endswith("IfExists")
    base, test = _string_test(op)
    negated = "Not" in base
    patterns = [str(p) for p in patterns]

    def matches(value: str) -> bool:
        # a negated operator holds when the value matches none of the patterns; others when it matches one
        return all(test(p, value) for p in patterns) if negated else any(test(p, value) for p in patterns)

    if qualifier == "ForAllValues":
        return all(matches(v) for v in (values or ()))  # an absent or empty key: vacuously true
    if qualifier == "ForAnyValue":
        return any(matches(v) for v in (values or ()))  # an absent key: false
    if qualifier:
        raise NotImplementedError(f"condition qualifier {qualifier}")
    if values is None:
        return if_exists or negated
    if len(values) != 1:
        return False  # a single-valued operator on a multivalued key
    return matches(values[0])


def _statement_applies(st: dict, request: Request) -> bool:
    if "Action" in st and not any(_wild(a, request.action, False) for a in _as_list(st["Action"])):
        return False
    if "NotAction" in st and any(_wild(a, request.action, False) for a in _as_list(st["NotAction"])):
        return False
    if "Resource" in st and not any(_wild(r, request.resource) for r in _as_list(st["Resource"])):
        return False
    if "NotResource" in st and any(_wild(r, request.resource) for r in _as_list(st["NotResource"])):
        return False
    for op, keys in (st.get("Condition") or {}).items():
        for key, patterns in keys.items():
            if not _condition_holds(op, key, _as_list(patterns), request):
                return False
    return True


def evaluate(statements: list[dict], request: Request) -> Decision:
    """IAM's policy evaluation within one identity policy set: explicit Deny > Allow > implicit deny."""
    allow = None
    for st in statements:
        if _statement_applies(st, request):
            if st["Effect"] == "Deny":
                return Decision(False, f"explicitly denied by statement {st.get('Sid', '?')}")
            allow = allow or st
    if allow is not None:
        return Decision(True, f"allowed by statement {allow.get('Sid', '?')}")
    return Decision(False, "no statement allows it (implicit deny)")


# --------------------------------------------------------------------------------------------- recorded calls


@dataclass
class Call:
    """One AWS API call a function made, as parsed from the wire."""

    service: str  # "dynamodb", "ssm", ...
    action: str  # "Query", "GetParameters", ...
    region: str
    body: dict

    def describe(self) -> str:
        b = self.body
        if self.service == "dynamodb":
            parts = [f"table={b.get('TableName')}"]
            if b.get("IndexName"):
                parts.append(f"index={b['IndexName']}")
            if b.get("KeyConditionExpression"):
                parts.append(f"key condition={b['KeyConditionExpression']!r}")
            if b.get("TransactItems"):
                parts.append(f"{len(b['TransactItems'])} items")
            return f"dynamodb:{self.action} " + " ".join(parts)
        if self.service == "ssm":
            return f"ssm:{self.action} names={b.get('Names') or [b.get('Name')]}"
        return f"{self.service}:{self.action}"


def _attr(value: dict) -> str:
    (kind, v), = value.items()
    return str(v)


def _partition_key(key_condition: str, names: dict, values: dict, attribute: str) -> str | None:
    """The value of `attribute = :v` in a KeyConditionExpression (the partition key's equality)."""
    for term in re.split(r"\s+and\s+", key_condition, flags=re.IGNORECASE):
        m = re.fullmatch(r"\s*\(?\s*([#\w.]+)\s*=\s*(:\w+)\s*\)?\s*", term)
        if m:
            name = names.get(m.group(1), m.group(1))
            if name == attribute:
                return _attr(values[m.group(2)])
    return None


TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}


def requests_of(call: Call, schema: dict[str | None, str]) -> list[Request]:
    """The authorisation requests one call makes (IAM's view of it)."""
    arn = lambda table, index=None: (f"arn:aws:dynamodb:{call.region}:{ACCOUNT}:table/{table}"  # noqa: E731
                                     + (f"/index/{index}" if index else ""))
    leading = lambda keys: (("dynamodb:LeadingKeys", tuple(keys)),) if keys else ()  # noqa: E731
    b = call.body
    if call.service == "dynamodb":
        pk = schema[None]
        if call.action in ("GetItem", "DeleteItem", "UpdateItem"):
            return [Request(f"dynamodb:{call.action}", arn(b["TableName"]), leading([_attr(b["Key"][pk])]))]
        if call.action == "PutItem":
            return [Request("dynamodb:PutItem", arn(b["TableName"]), leading([_attr(b["Item"][pk])]))]
        if call.action == "Query":
            index = b.get("IndexName")
            value = _partition_key(b.get("KeyConditionExpression", ""), b.get("ExpressionAttributeNames") or {},
                                   b.get("ExpressionAttributeValues") or {}, schema.get(index, pk))
            return [Request("dynamodb:Query", arn(b["TableName"], index), leading([value] if value is not None else []))]
        if call.action == "Scan":
            return [Request("dynamodb:Scan", arn(b["TableName"], b.get("IndexName")))]
        if call.action == "TransactWriteItems":
            out = []
            for item in b["TransactItems"]:
                (kind, op), = item.items()
                key = op.get("Item") or op.get("Key")
                out.append(Request(f"dynamodb:{TRANSACT_ACTIONS[kind]}", arn(op["TableName"]), leading([_attr(key[pk])])))
            return out
        if call.action in ("BatchGetItem", "BatchWriteItem"):
            out = []
            for table, entries in b["RequestItems"].items():
                keys = entries["Keys"] if call.action == "BatchGetItem" else [
                    (e.get("PutRequest", {}).get("Item") or e.get("DeleteRequest", {}).get("Key")) for e in entries]
                out.append(Request(f"dynamodb:{call.action}", arn(table), leading([_attr(k[pk]) for k in keys])))
            return out
        if "TableName" in b:
            return [Request(f"dynamodb:{call.action}", arn(b["TableName"]))]
    if call.service == "ssm":
        names = b.get("Names") or ([b["Name"]] if "Name" in b else [])
        out = []
        for name in names:
            plain = name.split(":", 1)[0] if not name.startswith("arn:") else name
            resource = plain if plain.startswith("arn:") else (
                f"arn:aws:ssm:{call.region}:{ACCOUNT}:parameter{plain if plain.startswith('/') else '/' + plain}")
            out.append(Request(f"ssm:{call.action}", resource))
        if call.action == "GetParametersByPath":
            out.append(Request("ssm:GetParametersByPath", f"arn:aws:ssm:{call.region}:{ACCOUNT}:parameter{b['Path']}"))
        return out
    return [Request(f"{call.service}:{call.action}", "*")]


@dataclass
class Finding:
    instance: str
    role: str
    call: Call
    request: Request
    decision: Decision

    def __str__(self) -> str:
        return (f"{self.instance} ({self.role}): {self.call.describe()}\n"
                f"    -> {self.request} DENIED: {self.decision.reason}")


def authorize(call: Call, role: Role, schema: dict[str | None, str]) -> list[tuple[Request, Decision]]:
    return [(req, evaluate(role.statements, req)) for req in requests_of(call, schema)]


# --------------------------------------------------------------------------------------------- the recording proxy


SERVICES = {"DynamoDB_20120810": "dynamodb", "AmazonSSM": "ssm"}


def parse_call(headers: dict[str, str], body: bytes) -> Call:
    """An AWS JSON-protocol request as the SDK sends it: X-Amz-Target names service and action, the SigV4 credential
    scope names the region."""
    target = headers.get("x-amz-target", "")
    prefix, _, action = target.partition(".")
    scope = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/", headers.get("authorization", ""))
    region = scope.group(1) if scope else "us-east-1"
    service = SERVICES.get(prefix) or (scope.group(2) if scope else "unknown")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {"raw": body[:200].decode(errors="replace")}
    return Call(service, action or "unknown", region, parsed)


@dataclass
class Recorder:
    """A proxy in front of moto for one function instance: records every call, forwards it unchanged."""

    instance: str
    binary: str
    parameters: dict[str, str] | None  # template parameters this instance was configured with; None: no template config
    upstream: tuple[str, int]
    why_not_template: str = ""
    calls: list[Call] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    checked: int = 0  # calls already evaluated

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


RECORDERS: list[Recorder] = []
_LOCK = threading.Lock()


def start_recorder(instance: str, binary: str, upstream_endpoint: str, parameters: dict[str, str] | None,
                   why_not_template: str = "") -> Recorder:
    host, port = re.match(r"https?://([^:/]+):(\d+)", upstream_endpoint).groups()
    rec = Recorder(instance, binary, parameters, (host, int(port)), why_not_template)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002
            pass

        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with _LOCK:
                rec.calls.append(parse_call(headers, body))
            conn = http.client.HTTPConnection(*rec.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items()
                                                                           if k.lower() not in ("connection",)})
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

    rec.server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=rec.server.serve_forever, name=f"iam-recorder-{instance}", daemon=True).start()
    with _LOCK:
        RECORDERS.append(rec)
    return rec


# The environment a function instance gets -> the template parameters that produce it (template.yaml's wiring).
ENV_TO_PARAMETER = {
    "METAHUB_SIGNING_KEY_PARAM": "SigningKeyParameterName",
    "METAHUB_ORIGIN_SECRET_PARAM": "OriginSecretParameterName",
    "METAHUB_UPSTREAM_CREDENTIALS_PARAM": "UpstreamCredentialsParameterName",
}
# Which of them the template gives each function (a function given another one is not a template configuration).
TEMPLATE_SECRETS = {
    "metahub-registry": {"METAHUB_SIGNING_KEY_PARAM", "METAHUB_ORIGIN_SECRET_PARAM", "METAHUB_UPSTREAM_CREDENTIALS_PARAM"},
    "metahub-token": {"METAHUB_SIGNING_KEY_PARAM", "METAHUB_ORIGIN_SECRET_PARAM"},
    "metahub-admin": {"METAHUB_UPSTREAM_CREDENTIALS_PARAM"},
}
REQUIRED_SECRETS = {
    "metahub-registry": {"METAHUB_SIGNING_KEY_PARAM", "METAHUB_ORIGIN_SECRET_PARAM"},
    "metahub-token": {"METAHUB_SIGNING_KEY_PARAM", "METAHUB_ORIGIN_SECRET_PARAM"},
    "metahub-admin": set(),
}


def template_parameters(binary: str, env: dict[str, str]) -> tuple[dict[str, str] | None, str]:
    """The template parameters a deploy would give `binary` this environment with; (None, why) when no deploy of
    template.yaml gives a function this environment (a test of a configuration the template never makes)."""
    store = env.get("METAHUB_STORE", "")
    if not store.startswith("dynamodb:"):
        return None, f"METAHUB_STORE={store!r}"
    params = {"ExistingTableName": store.split(":", 1)[1]}
    given = {k for k in ENV_TO_PARAMETER if env.get(k)}
    if missing := REQUIRED_SECRETS.get(binary, set()) - given:
        return None, f"{sorted(missing)} unset (the template always sets them)"
    if extra := given - TEMPLATE_SECRETS.get(binary, set()):
        return None, f"{sorted(extra)} set (the template never gives {binary} that)"
    for var in given:
        params[ENV_TO_PARAMETER[var]] = env[var]
    return params, ""


def check(recorders: list[Recorder] | None = None, only_new: bool = True) -> tuple[list[Finding], int]:
    """Evaluates the calls recorded since the last check; returns the denied ones and how many were evaluated."""
    template = load_template()
    schema = table_key_schema(template)
    findings: list[Finding] = []
    evaluated = 0
    roles_cache: dict[tuple, dict[str, Role]] = {}
    with _LOCK:
        todo = [(r, r.calls[r.checked if only_new else 0:]) for r in (recorders if recorders is not None else RECORDERS)]
        for r, _ in todo:
            r.checked = len(r.calls)
    for rec, calls in todo:
        if rec.parameters is None:
            continue
        for call in calls:
            key = (tuple(sorted(rec.parameters.items())), call.region)
            if key not in roles_cache:
                roles_cache[key] = render_roles(rec.parameters, call.region, template)
            role = roles_cache[key][rec.binary]
            for req, decision in authorize(call, role, schema):
                evaluated += 1
                if not decision.allowed:
                    findings.append(Finding(rec.instance, role.logical_id, call, req, decision))
    return findings, evaluated


def summary() -> str:
    """Every distinct call shape recorded, per function: what the roles are exercised with."""
    shapes: dict[str, set[str]] = {}
    schema = table_key_schema()
    for rec in RECORDERS:
        for call in rec.calls:
            for req in requests_of(call, schema):
                shapes.setdefault(rec.binary, set()).add(str(req))
    return "\n".join(f"{b}:\n" + "\n".join(f"    {s}" for s in sorted(v)) for b, v in sorted(shapes.items()))


# --------------------------------------------------------------------------------------------- pytest wiring

EVALUATED = [0]


def denied_message() -> str | None:
    """The calls recorded since the last check that their role denies, as a failure message (None: all allowed)."""
    findings, evaluated = check()
    EVALUATED[0] += evaluated
    if not findings:
        return None
    lines = ["IAM: calls the role policy of template.yaml does not allow (AccessDenied on AWS):"]
    seen = set()
    for f in findings:
        text = str(f)
        if text not in seen:
            seen.add(text)
            lines.append("  " + text)
    return "\n".join(lines)


def terminal_summary(terminalreporter) -> None:
    if not RECORDERS:
        return
    terminalreporter.section("IAM check (tests/iam_check.py)")
    checked = [r for r in RECORDERS if r.parameters is not None]
    terminalreporter.write_line(f"{EVALUATED[0]} authorisation requests of {sum(len(r.calls) for r in checked)} AWS calls "
                                f"by {len(checked)} function instances evaluated against template.yaml's roles")
    for r in RECORDERS:
        if r.parameters is None and r.calls:
            terminalreporter.write_line(f"not checked: {r.instance} ({len(r.calls)} calls): not a template configuration, {r.why_not_template}")
