"""Static checks of template.yaml: the security and routing properties docs/deploy.md promises.

Runs offline: the template is read with cfn-lint's decoder (knows !Ref, !Sub, ... tags) and,
for the checks that need the expanded form, transformed locally with the SAM translator.
    python3 -m pytest tests/deploy -q
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = pathlib.Path(os.environ.get("METAHUB_TEMPLATE", ROOT / "template.yaml"))

CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"

# Resource '*' is allowed only where AWS offers nothing narrower; each entry needs a reason
# in docs/deploy.md. The template currently needs none.
DOCUMENTED_WILDCARD_RESOURCES: dict[tuple[str, str], str] = {}

FUNCTIONS = {
    "RegistryFunction": {"binary": "metahub-registry", "auth": "NONE", "role": "RegistryRole"},
    "TokenFunction": {"binary": "metahub-token", "auth": "NONE", "role": "TokenRole"},
    "AdminFunction": {"binary": "metahub-admin", "auth": "AWS_IAM", "role": "AdminRole"},
}


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tpl() -> dict:
    from cfnlint.decode import decode

    template, matches = decode(str(TEMPLATE))
    assert not matches, f"template does not parse: {matches}"
    return json.loads(json.dumps(template, default=str))  # plain dicts, no node types


def sam_transform(tpl: dict, parameter_values: dict) -> dict:
    """The template after the SAM transform (what CloudFormation really deploys)."""
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    doc = copy.deepcopy(tpl)
    # The translator only accepts packaged code locations; `sam package` does this rewrite.
    doc["Globals"]["Function"]["CodeUri"] = "s3://bucket/metahub.zip"

    class NoManagedPolicies:
        def load(self):
            return {}

    return transform(doc, parameter_values, NoManagedPolicies())


@pytest.fixture(scope="module")
def expanded(tpl) -> dict:
    return sam_transform(tpl, {})


def resources(t: dict, kind: str) -> dict:
    return {k: v for k, v in t["Resources"].items() if v["Type"] == kind}


def branches(node):
    """Yield every concrete value a possibly-conditional node can take (AWS::NoValue dropped)."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, yes, no = node["Fn::If"]
        yield from branches(yes)
        yield from branches(no)
    elif node == {"Ref": "AWS::NoValue"}:
        return
    else:
        yield node


def as_list(node) -> list:
    return node if isinstance(node, list) else [node]


def statements(doc: dict):
    """(resource, statement) for every IAM policy statement in roles and policies."""
    for name, res in doc["Resources"].items():
        props = res.get("Properties", {})
        docs = []
        if res["Type"] == "AWS::IAM::Role":
            docs += [p["PolicyDocument"] for p in props.get("Policies", [])]
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs.append(props["PolicyDocument"])
        if res["Type"] == "AWS::Serverless::Function":
            for p in as_list(props.get("Policies", [])):
                if isinstance(p, dict) and "Statement" in p:
                    docs.append(p)
        for d in docs:
            for st in as_list(d["Statement"]):
                for concrete in branches(st):
                    yield name, concrete


def behaviours(tpl: dict) -> list[dict]:
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    return [cfg["DefaultCacheBehavior"], *cfg.get("CacheBehaviors", [])]


def function_env(tpl: dict, fn: str) -> dict:
    env = dict(tpl["Globals"]["Function"].get("Environment", {}).get("Variables", {}))
    env.update(tpl["Resources"][fn]["Properties"].get("Environment", {}).get("Variables", {}))
    return env


def role_actions(tpl: dict, role: str) -> dict[str, list]:
    """action -> resources granted by one role."""
    out: dict[str, list] = {}
    for name, st in statements(tpl):
        if name == role and st["Effect"] == "Allow":
            for action in as_list(st["Action"]):
                out.setdefault(action, []).extend(as_list(st["Resource"]))
    return out


# ---------------------------------------------------------------- CloudFront

def test_every_behaviour_disables_caching(tpl):
    for b in behaviours(tpl):
        assert b["CachePolicyId"] == CACHING_DISABLED, b.get("PathPattern", "default")
        assert "ForwardedValues" not in b, "legacy cache settings would bypass the policies"
        assert b.get("DefaultTTL", 0) == 0 and b.get("MaxTTL", 0) == 0


def test_authorization_reaches_the_origin(tpl):
    # CloudFront forwards Authorization through an origin request policy only when caching is
    # disabled; AllViewerExceptHostHeader then forwards it with every other viewer header and
    # all query strings (Host excepted: a Function URL answers only to its own host).
    for b in behaviours(tpl):
        where = b.get("PathPattern", "default")
        assert b["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST, where
        assert b["CachePolicyId"] == CACHING_DISABLED, where
    # No custom origin request policy that could drop headers sneaks in.
    assert not resources(tpl, "AWS::CloudFront::OriginRequestPolicy")


def test_routes(tpl):
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    origins = {o["Id"]: o for o in cfg["Origins"]}
    by_path = {b.get("PathPattern"): b["TargetOriginId"] for b in behaviours(tpl)}
    assert by_path == {None: "registry", "/v2/*": "registry", "/token": "token"}
    for origin_id, fn in (("registry", "RegistryFunction"), ("token", "TokenFunction")):
        dom = origins[origin_id]["DomainName"]
        assert dom == {"Fn::Select": [2, {"Fn::Split": ["/", {"Fn::GetAtt": [f"{fn}Url", "FunctionUrl"]}]}]}
        assert origins[origin_id]["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"


def test_push_verbs_reach_the_function_and_viewers_use_https(tpl):
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    assert cfg["HttpVersion"] == "http2and3"
    for b in behaviours(tpl):
        assert set(b["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"}
        assert b["ViewerProtocolPolicy"] in ("https-only", "redirect-to-https")
        assert b.get("Compress") is False, "compression must not touch digest-addressed bodies"


def test_origin_secret_header_is_set_and_checked(tpl):
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    expected = [
        {"Fn::Sub": "{{resolve:ssm:${OriginSecretParameterName}:${OriginSecretParameterVersion}}}"},
        {"Fn::Sub": "{{resolve:ssm:${OriginSecretParameterName}}}"},
    ]
    assert {o["Id"] for o in cfg["Origins"]} == {"registry", "token"}
    for origin in cfg["Origins"]:
        headers = {h["HeaderName"]: h["HeaderValue"] for h in origin.get("OriginCustomHeaders", [])}
        assert list(branches(headers.get("X-Origin-Verify"))) == expected, origin["Id"]
    param = tpl["Parameters"]["OriginSecretParameterName"]
    assert param["Default"].startswith("/"), "a parameter name, not a value"
    # Every function behind CloudFront knows where to read the value, and may read it.
    for fn in ("RegistryFunction", "TokenFunction"):
        assert function_env(tpl, fn)["METAHUB_ORIGIN_SECRET_PARAM"] == {"Ref": "OriginSecretParameterName"}
        granted = role_actions(tpl, FUNCTIONS[fn]["role"])["ssm:GetParameters"]
        assert any("${OriginSecretParameterName}" in json.dumps(r) for r in granted), fn


# ---------------------------------------------------------------- functions

def test_functions_build_with_cargo_lambda(tpl):
    glob = tpl["Globals"]["Function"]
    assert glob["Runtime"] == "provided.al2023" and glob["Handler"] == "bootstrap"
    assert glob["CodeUri"] == "."  # the workspace root Cargo.toml
    assert glob["Architectures"] == [{"Ref": "Architecture"}]
    arch = tpl["Parameters"]["Architecture"]
    assert arch["Default"] == "x86_64" and set(arch["AllowedValues"]) == {"x86_64", "arm64"}
    assert tpl["Parameters"]["MemorySize"]["Default"] == 256
    for fn, want in FUNCTIONS.items():
        meta = tpl["Resources"][fn]["Metadata"]
        assert meta["BuildMethod"] == "rust-cargolambda"
        assert meta["BuildProperties"]["Binary"] == want["binary"]


def resolve_parameters(node, values: dict):
    """`node` with every `{"Ref": <parameter>}` of `values` replaced by its value (what CloudFormation renders)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in values:
            return values[node["Ref"]]
        return {k: resolve_parameters(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_parameters(v, values) for v in node]
    return node


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_architecture_parameter_renders_both(tpl, arch):
    """Graviton is a deploy-time choice: Architecture=arm64 puts every function on arm64, the default stays x86_64."""
    values = {"Architecture": arch}
    rendered = resolve_parameters(sam_transform(tpl, values), values)
    functions = resources(rendered, "AWS::Lambda::Function")
    assert set(functions) >= set(FUNCTIONS)
    for name, fn in functions.items():
        assert fn["Properties"]["Architectures"] == [arch], name
    assert tpl["Parameters"]["Architecture"]["Default"] == "x86_64"


def test_binaries_exist_in_the_workspace(tpl):
    crates = {"metahub-registry": "registry", "metahub-token": "token", "metahub-admin": "admin"}
    missing = [c for c in crates.values() if not (ROOT / "functions" / c / "Cargo.toml").exists()]
    assert not missing, f"the template builds Lambda crates the workspace lacks: {missing}"
    for binary, crate in crates.items():
        manifest = (ROOT / "functions" / crate / "Cargo.toml").read_text()
        assert re.search(rf'^name\s*=\s*"{binary}"', manifest, re.M), f"{crate} does not build {binary}"


def test_function_url_auth_types(tpl, expanded):
    for fn, want in FUNCTIONS.items():
        assert tpl["Resources"][fn]["Properties"]["FunctionUrlConfig"]["AuthType"] == want["auth"], fn
    public = [
        p["Properties"]["FunctionName"]
        for p in resources(expanded, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "*"
    ]
    assert {json.dumps(p) for p in public} == {
        json.dumps({"Ref": "RegistryFunction"}),
        json.dumps({"Ref": "TokenFunction"}),
    }, "only the CloudFront-fronted functions are publicly invocable, and only via their URL"
    for p in resources(expanded, "AWS::Lambda::Permission").values():
        props = p["Properties"]
        assert props.get("FunctionUrlAuthType") == "NONE" or props.get("InvokedViaFunctionUrl") is True


def test_no_secret_values_in_environment(tpl, expanded):
    for fn in FUNCTIONS:
        env = function_env(tpl, fn)
        for key, value in env.items():
            text = json.dumps(value)
            assert "{{resolve:" not in text, f"{fn}.{key} would put a resolved secret in clear"
            if key.endswith("_VERSION"):  # which version of a named parameter, never a value
                assert all(b == {"Ref": "OriginSecretParameterVersion"} for b in branches(value)), key
                continue
            assert not re.search(r"KEY|SECRET|PASSWORD|CREDENTIAL", key) or key.endswith("_PARAM"), (
                f"{fn}.{key}: secrets are passed as SSM parameter names (*_PARAM) only"
            )
            if key.endswith("_PARAM"):
                for b in branches(value):
                    assert isinstance(b, dict) and set(b) == {"Ref"}, f"{fn}.{key} must name a parameter"
                    assert b["Ref"].endswith("ParameterName"), f"{fn}.{key}"
                    default = tpl["Parameters"][b["Ref"]]["Default"]
                    assert default == "" or default.startswith("/"), "a parameter name, not a value"
    for name, p in tpl["Parameters"].items():
        if re.search(r"Secret|Key|Password|Credential", name):
            assert name.endswith(("ParameterName", "ParameterVersion", "Arn")), f"{name}: names/ARNs, never values"
            assert p.get("NoEcho") is not True, f"{name} looks like it carries a value"
    # Same after the transform: what Lambda actually receives.
    for fn in FUNCTIONS:
        env = expanded["Resources"][fn]["Properties"]["Environment"]["Variables"]
        assert "{{resolve:" not in json.dumps(env)


def test_behind_cloudfront_functions_get_the_signing_key_name(tpl):
    for fn in ("RegistryFunction", "TokenFunction"):
        env = function_env(tpl, fn)
        assert env["METAHUB_SIGNING_KEY_PARAM"] == {"Ref": "SigningKeyParameterName"}
        assert env["METAHUB_STORE"]["Fn::Sub"][0] == "dynamodb:${Table}"
    assert function_env(tpl, "RegistryFunction")["METAHUB_UPSTREAM"] == {"Ref": "UpstreamUrl"}
    assert tpl["Parameters"]["UpstreamUrl"]["Default"] == "https://registry-1.docker.io"


# ---------------------------------------------------------------- IAM

def test_no_wildcard_actions_or_resources(tpl, expanded):
    for doc in (tpl, expanded):
        seen = 0
        for name, st in statements(doc):
            seen += 1
            for action in as_list(st["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
            for res in as_list(st.get("Resource", [])):
                if res == "*":
                    assert (name, st.get("Sid", "")) in DOCUMENTED_WILDCARD_RESOURCES, f"{name}: Resource '*'"
            assert "NotAction" not in st and "NotResource" not in st, name
        assert seen >= 9
    # No role picks up AWS managed policies (AWSLambdaBasicExecutionRole uses Resource '*').
    for name, role in resources(expanded, "AWS::IAM::Role").items():
        assert not role["Properties"].get("ManagedPolicyArns"), name
    for fn, want in FUNCTIONS.items():
        assert expanded["Resources"][fn]["Properties"]["Role"] == {"Fn::GetAtt": [want["role"], "Arn"]}


def test_least_privilege_per_function(tpl):
    def table_actions(role):
        return {a for a in role_actions(tpl, role) if a.startswith("dynamodb:")}

    assert table_actions("RegistryRole") == {"dynamodb:GetItem", "dynamodb:PutItem"}
    assert table_actions("TokenRole") == {"dynamodb:GetItem"}
    admin = table_actions("AdminRole")
    assert admin == {
        "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem", "dynamodb:Scan", "dynamodb:Query",
    }
    # Query: on the one index, named exactly (not index/*), and on the table for the audit log only.
    index = store_index_name()
    queries = [json.dumps(r) for r in role_actions(tpl, "AdminRole")["dynamodb:Query"]]
    assert sum(q.count(f"/index/{index}") == 1 for q in queries) == 1, queries
    assert not any("/index/*" in q for q in queries)
    for action, res in role_actions(tpl, "AdminRole").items():
        if action != "dynamodb:Query" and action.startswith("dynamodb:"):
            assert "/index/" not in json.dumps(res), action
    # Parameters: registry and token read the signing key and origin secret; only the registry
    # reads upstream credentials, and only when configured; the admin reads none.
    registry_params = json.dumps(role_actions(tpl, "RegistryRole")["ssm:GetParameters"])
    token_params = json.dumps(role_actions(tpl, "TokenRole")["ssm:GetParameters"])
    for name in ("SigningKeyParameterName", "OriginSecretParameterName"):
        assert name in registry_params and name in token_params
    assert "UpstreamCredentialsParameterName" in registry_params
    assert "UpstreamCredentialsParameterName" not in token_params
    assert not {a for a in role_actions(tpl, "AdminRole") if a.startswith(("ssm:", "secretsmanager:", "kms:"))}
    assert "METAHUB_SIGNING_KEY_PARAM" not in function_env(tpl, "AdminFunction")
    conditional = [
        st for _, st in statements(tpl) if "UpstreamCredentialsParameterName" in json.dumps(st)
    ]
    assert conditional and '"HasUpstreamCredentials"' in json.dumps(tpl["Resources"]["RegistryRole"])
    assert all("secretsmanager" not in json.dumps(st) for _, st in statements(tpl))


# ---------------------------------------------------------------- table

def test_table(tpl):
    table = tpl["Resources"]["Table"]
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    p = table["Properties"]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    attrs = {a["AttributeName"]: a["AttributeType"] for a in p["AttributeDefinitions"]}
    assert attrs == {"pk": "S", "sk": "S", "machineType": "S"}
    (gsi,) = p["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == store_index_name()
    assert gsi["KeySchema"] == [{"AttributeName": "machineType", "KeyType": "HASH"}]
    assert gsi["Projection"] == {"ProjectionType": "KEYS_ONLY"}


def store_index_name() -> str:
    """The index DynamoStore queries (functions/store-dynamodb), so template and code agree."""
    src = ROOT / "functions" / "store-dynamodb" / "src" / "lib.rs"
    if not src.exists():
        return "byMachineType"
    m = re.search(r'pub const BY_MACHINE_TYPE_INDEX: &str = "([^"]+)"', src.read_text())
    assert m, "BY_MACHINE_TYPE_INDEX not found in functions/store-dynamodb/src/lib.rs"
    return m.group(1)


def test_table_matches_the_store_code():
    src = ROOT / "functions" / "store-dynamodb" / "src" / "lib.rs"
    code = src.read_text()
    for needle in ('key("pk", KeyType::Hash)', 'key("sk", KeyType::Range)', 'key("machineType", KeyType::Hash)',
                   "ProjectionType::KeysOnly", 'attribute_name("ttl")', "BillingMode::PayPerRequest"):
        assert needle in code, f"the store's create_table changed ({needle}): update template.yaml and localstack/"


def test_localstack_hook_uses_the_same_schema():
    hook = (ROOT / "localstack" / "init" / "ready.d" / "10-tables.sh").read_text()
    for needle in (
        "AttributeName=pk,KeyType=HASH", "AttributeName=sk,KeyType=RANGE",
        f'"IndexName":"{store_index_name()}"', '"AttributeName":"machineType","KeyType":"HASH"',
        '"ProjectionType":"KEYS_ONLY"', "AttributeName=ttl", "PAY_PER_REQUEST",
    ):
        assert needle in hook, needle


# ---------------------------------------------------------------- outputs

def test_outputs(tpl):
    outputs = tpl["Outputs"]
    for key in ("RegistryDomain", "CloudFrontDomain", "TableName", "AdminEndpoint", "LoginCommand"):
        assert key in outputs, key
    assert outputs["AdminEndpoint"]["Value"] == {"Fn::GetAtt": ["AdminFunctionUrl", "FunctionUrl"]}
    assert "docker login" in json.dumps(outputs["LoginCommand"])


# ---------------------------------------------------------------- first real deploy (issue 13)

def statements_with(tpl: dict, role: str, action: str) -> list[dict]:
    return [st for name, st in statements(tpl) if name == role and action in as_list(st["Action"])]


def table_arn(resource) -> bool:
    """The table itself (not an index) - the ARN pattern every table statement uses."""
    text = json.dumps(resource)
    return "table/${T}" in text and "/index/" not in text


def test_admin_may_query_the_audit_log_on_the_table(tpl):
    # GET /admin/changes queries pk=CHANGES on the table; a grant on the index alone is AccessDenied.
    code = (ROOT / "functions" / "store-dynamodb" / "src" / "lib.rs").read_text()
    partition = re.search(r'const CHANGES_PK: &str = "([^"]+)"', code).group(1)
    on_table = [st for st in statements_with(tpl, "AdminRole", "dynamodb:Query") if all(table_arn(r) for r in as_list(st["Resource"]))]
    assert len(on_table) == 1, on_table
    assert on_table[0]["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [partition]}}


def test_registry_writes_only_generated_indexes(tpl):
    code = (ROOT / "functions" / "store-dynamodb" / "src" / "lib.rs").read_text()
    prefix = re.search(r'fn manifest_key\(.*?format!\("([A-Z]+#)', code, re.S).group(1)
    # and the NVIDIA requirements it reads from image configs (issue 26)
    gpu = re.search(r'fn gpu_key\(.*?format!\("([A-Z]+#)', code, re.S).group(1)
    (put,) = statements_with(tpl, "RegistryRole", "dynamodb:PutItem")
    assert as_list(put["Action"]) == ["dynamodb:PutItem"], "no other action rides on the write condition"
    assert put["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{prefix}*", f"{gpu}*"]}}
    for other in ("ACCT#", "MT#", "META", "CHANGES"):
        assert not other.startswith(prefix) and not other.startswith(gpu), other
    # Every other registry table statement only reads.
    writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
    for name, st in statements(tpl):
        if name == "RegistryRole" and st is not put:
            assert not writes & set(as_list(st["Action"])), st


def test_token_function_writes_nothing(tpl):
    writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem",
              "dynamodb:TransactWriteItems", "ssm:PutParameter"}
    assert not writes & set(role_actions(tpl, "TokenRole")), role_actions(tpl, "TokenRole")
    # ...which holds because the signing key always comes from SSM (the table-kept key is never inserted).
    assert tpl["Parameters"]["SigningKeyParameterName"]["Default"].startswith("/")
    assert "^$" not in tpl["Parameters"]["SigningKeyParameterName"]["AllowedPattern"]
    assert function_env(tpl, "TokenFunction")["METAHUB_SIGNING_KEY_PARAM"] == {"Ref": "SigningKeyParameterName"}


CACHEABLE_ERRORS = {400, 403, 404, 405, 414, 416, 500, 501, 502, 503, 504}


def test_error_answers_are_never_cached(tpl):
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    responses = {r["ErrorCode"]: r for r in cfg["CustomErrorResponses"]}
    assert set(responses) == CACHEABLE_ERRORS, "every status CloudFront caches by default"
    for code, r in responses.items():
        assert r["ErrorCachingMinTTL"] == 0, code
        assert "ResponsePagePath" not in r and "ResponseCode" not in r, "the registry's own JSON goes out"
    # ...and every answer of the functions says so itself, from one place (the common layer).
    layer = (ROOT / "functions" / "http" / "src" / "response.rs").read_text()
    common = layer[layer.index("pub async fn common_layer"):]
    common = common[: common.index("\n}\n")]
    assert "header::CACHE_CONTROL" in common and '"no-store"' in common and '"private, no-store"' in common


def test_timeouts_derive_from_the_one_function_timeout(tpl):
    glob = tpl["Globals"]["Function"]
    assert glob["Timeout"] == {"Ref": "FunctionTimeout"}
    assert glob["Environment"]["Variables"]["METAHUB_FUNCTION_TIMEOUT"] == {"Ref": "FunctionTimeout"}
    for fn in FUNCTIONS:
        props = tpl["Resources"][fn]["Properties"]
        assert "Timeout" not in props, f"{fn}: one timeout, set in Globals"
        env = function_env(tpl, fn)
        assert not {"METAHUB_UPSTREAM_TIMEOUT"} & set(env), f"{fn}: derived, not set by hand"
    assert tpl["Parameters"]["FunctionTimeout"]["MaxValue"] <= 900


def test_origin_secret_rotation_pins_one_version_for_cloudfront_and_functions(tpl):
    for fn in ("RegistryFunction", "TokenFunction"):
        value = function_env(tpl, fn)["METAHUB_ORIGIN_SECRET_VERSION"]
        assert value == {"Fn::If": ["HasOriginSecretVersion", {"Ref": "OriginSecretParameterVersion"}, {"Ref": "AWS::NoValue"}]}
    assert (ROOT / "infra" / "rotate-origin-secret.sh").exists()


def test_one_pass_deploy_viewer_host_reaches_the_functions(tpl):
    fn = tpl["Resources"]["ViewerHostFunction"]
    assert fn["Properties"]["AutoPublish"] is True
    code = fn["Properties"]["FunctionCode"]
    assert "request.headers.host" in code and "x-forwarded-host" in code
    arn = {"Fn::GetAtt": ["ViewerHostFunction", "FunctionMetadata.FunctionARN"]}
    for b in behaviours(tpl):
        assert b["FunctionAssociations"] == [{"EventType": "viewer-request", "FunctionARN": arn}], b.get("PathPattern")
    # No second pass: nothing needs the distribution's domain before it exists.
    assert "PublicUrl" not in tpl["Parameters"]
    for f in FUNCTIONS:
        assert "METAHUB_PUBLIC_URL" not in function_env(tpl, f)
    assert "second" not in (ROOT / "infra" / "deploy.sh").read_text().lower()


def test_function_urls_grant_invoke_function_too(tpl):
    perms = resources(tpl, "AWS::Lambda::Permission")
    granted = {json.dumps(p["Properties"]["FunctionName"]) for p in perms.values()
               if p["Properties"]["Action"] == "lambda:InvokeFunction" and p["Properties"].get("InvokedViaFunctionUrl") is True
               and p["Properties"]["Principal"] == "*"}
    assert granted == {json.dumps({"Ref": "RegistryFunction"}), json.dumps({"Ref": "TokenFunction"})}


def test_logs_are_json_and_token_memory_is_sized_for_argon2(tpl):
    for fn in FUNCTIONS:
        assert tpl["Resources"][fn]["Properties"]["LoggingConfig"]["LogFormat"] == "JSON", fn
    assert tpl["Resources"]["TokenFunction"]["Properties"]["MemorySize"] == {"Ref": "TokenMemorySize"}
    assert tpl["Parameters"]["TokenMemorySize"]["Default"] >= 512, "argon2 at 128 MB takes ~0.5 s per login"


def test_token_rate_limit_is_optional_and_off_by_default(tpl):
    p = tpl["Parameters"]["TokenRateLimit"]
    assert p["Default"] == 0 and "$" in p["Description"], "off by default, with its cost"
    acl = tpl["Resources"]["TokenRateLimitWebAcl"]
    assert acl["Condition"] == "HasTokenRateLimit"
    assert acl["Properties"]["Scope"] == "CLOUDFRONT"
    (rule,) = acl["Properties"]["Rules"]
    rate = rule["Statement"]["RateBasedStatement"]
    assert rate["Limit"] == {"Ref": "TokenRateLimit"} and rate["AggregateKeyType"] == "IP"
    match = rate["ScopeDownStatement"]["ByteMatchStatement"]
    assert match["SearchString"] == "/token" and match["FieldToMatch"] == {"UriPath": {}}
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    assert cfg["WebACLId"] == {"Fn::If": ["HasTokenRateLimit", {"Fn::GetAtt": ["TokenRateLimitWebAcl", "Arn"]}, {"Ref": "AWS::NoValue"}]}
    assert "TokenRateLimitNeedsUsEast1" in tpl["Rules"]


def test_no_stale_not_there_yet_texts():
    for path in [ROOT / "template.yaml", ROOT / "docs" / "deploy.md", *(ROOT / "functions").glob("*/Cargo.toml")]:
        text = path.read_text().lower()
        for stale in ("not there yet", "still to come", "answers unsupported"):
            assert stale not in text, f"{path.relative_to(ROOT)}: {stale!r}"


# ---------------------------------------------------------------- dashboard (issue 20)

def _dashboard_body(tpl) -> dict:
    """The dashboard's JSON with the template's ${...} references filled in with placeholders."""
    body = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    return json.loads(re.sub(r"\$\{[A-Za-z:]+\}", "X", body))


def test_dashboard_is_optional_and_off_by_default(tpl):
    param = tpl["Parameters"]["CreateDashboard"]
    assert param["Default"] == "false" and set(param["AllowedValues"]) == {"true", "false"}
    assert tpl["Conditions"]["WantsDashboard"] == {"Fn::Equals": [{"Ref": "CreateDashboard"}, "true"]}
    dashboard = tpl["Resources"]["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    assert dashboard["Condition"] == "WantsDashboard"


def test_dashboard_graphs_what_the_functions_emit(tpl):
    body = _dashboard_body(tpl)
    titles = [w["properties"]["title"] for w in body["widgets"]]
    for wanted in ("Pulls per machine type", "Upstream requests per pull", "Stale answers", "Failed and throttled logins"):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    text = json.dumps(body)
    # Every metric the dashboard reads is one the router records, in the namespace the EMF recorder writes.
    emitted = set(re.findall(r'"(metahub_[a-z_]+)"', (ROOT / "functions/http/src/access_log.rs").read_text()))
    graphed = set(re.findall(r"metahub_[a-z_]+", text))
    assert graphed and graphed <= emitted, graphed - emitted
    assert 'NAMESPACE: &str = "MetaHub"' in (ROOT / "functions/lambda/src/emf.rs").read_text()
    assert all(m[0] == "MetaHub" for w in body["widgets"] for m in w["properties"].get("metrics", []) if isinstance(m[0], str))
    # Log widgets read the function's own log group.
    logs = [w for w in body["widgets"] if w["type"] == "log"]
    assert logs and all(w["properties"]["query"].startswith("SOURCE 'X'") for w in logs)
    raw = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert "${TokenLogGroup}" in raw
