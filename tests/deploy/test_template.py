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

def render(node, **parameters):
    """`node` of template.yaml as CloudFormation renders it for `parameters` (tests/iam_check.py's renderer)."""
    import iam_check

    return iam_check.Renderer(iam_check.load_template(TEMPLATE), {k: str(v) for k, v in parameters.items()}).render(node)


def distribution_config(**parameters) -> dict:
    import iam_check

    raw = iam_check.load_template(TEMPLATE)["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    return render(raw, **parameters)


SECONDARY_URL = "https://abcdefghij0123456789.lambda-url.us-west-2.on.aws/"

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
    origins = {o["Id"]: o for o in cfg["Origins"] if "Id" in o}
    by_path = {b.get("PathPattern"): list(branches(b["TargetOriginId"])) for b in behaviours(tpl)}
    assert by_path == {None: ["registry-group", "registry"], "/v2/*": ["registry-group", "registry"], "/token": ["token"]}
    for origin_id, fn in (("registry", "RegistryFunction"), ("token", "TokenFunction")):
        dom = origins[origin_id]["DomainName"]
        assert dom == {"Fn::Select": [2, {"Fn::Split": ["/", {"Fn::GetAtt": [f"{fn}Url", "FunctionUrl"]}]}]}
        assert origins[origin_id]["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    # Without a second region: one origin per function, no group.
    single = distribution_config()
    assert [o["Id"] for o in single["Origins"]] == ["registry", "token"] and "OriginGroups" not in single


def test_origin_read_timeout_follows_the_function_timeout():
    """Finding 6: CloudFront waits as long as a function may take (it answers 503 itself before that)."""
    for timeout in (10, 60):
        cfg = distribution_config(FunctionTimeout=timeout, SecondaryRegistryFunctionUrl=SECONDARY_URL)
        assert {o["CustomOriginConfig"]["OriginReadTimeout"] for o in cfg["Origins"]} == {str(timeout)}
    assert "60" >= str(TEMPLATE_PARAMS()["FunctionTimeout"]["MaxValue"]), "CloudFront's default ceiling is 60 s"


def TEMPLATE_PARAMS() -> dict:
    import iam_check

    return iam_check.load_template(TEMPLATE)["Parameters"]


def test_second_region_fails_over_the_registry_behaviours():
    """SecondaryRegistryFunctionUrl: /v2/* and the default behaviour go to an origin group that fails over on 5xx and
    timeouts to the second region's registry function, with the same origin secret header; /token keeps POST and its
    one origin (CloudFront fails over GET/HEAD/OPTIONS only and refuses groups on behaviours that allow more)."""
    cfg = distribution_config(SecondaryRegistryFunctionUrl=SECONDARY_URL, OriginSecretParameterName="/m/o")
    origins = {o["Id"]: o for o in cfg["Origins"]}
    assert origins["registry-secondary"]["DomainName"] == "abcdefghij0123456789.lambda-url.us-west-2.on.aws"
    assert origins["registry-secondary"]["OriginCustomHeaders"] == origins["registry"]["OriginCustomHeaders"]
    (group,) = cfg["OriginGroups"]["Items"]
    assert [m["OriginId"] for m in group["Members"]["Items"]] == ["registry", "registry-secondary"]
    assert set(group["FailoverCriteria"]["StatusCodes"]["Items"]) == {500, 502, 503, 504}
    by_path = {b.get("PathPattern"): b for b in [cfg["DefaultCacheBehavior"], *cfg["CacheBehaviors"]]}
    for path in (None, "/v2/*"):
        assert by_path[path]["TargetOriginId"] == "registry-group"
        assert set(by_path[path]["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS"}
    assert by_path["/token"]["TargetOriginId"] == "token" and "POST" in by_path["/token"]["AllowedMethods"]


def test_second_region_global_table_and_secondary_stack(tpl):
    params = tpl["Parameters"]
    assert params["SecondaryRegion"]["Default"] == "" and params["CreateDistribution"]["Default"] == "true"
    table = tpl["Resources"]["GlobalTable"]
    assert table["Condition"] == "CreateGlobalTable" and table["DeletionPolicy"] == "Retain"
    regions = [r["Region"] for r in table["Properties"]["Replicas"]]
    assert regions == [{"Ref": "AWS::Region"}, {"Ref": "SecondaryRegion"}]
    assert table["Properties"]["KeySchema"] == tpl["Resources"]["Table"]["Properties"]["KeySchema"]
    assert table["Properties"]["GlobalSecondaryIndexes"] == tpl["Resources"]["Table"]["Properties"]["GlobalSecondaryIndexes"]
    assert tpl["Resources"]["Table"]["Condition"] == "CreateRegionalTable"
    assert "SecondaryRegionDiffers" in tpl["Rules"]
    # The second region's stack: functions and URLs only.
    for name in ("Distribution", "ViewerHostFunction"):
        assert tpl["Resources"][name]["Condition"] == "WantsDistribution", name
    for name in ("RegistryDomain", "PublicUrl", "LoginCommand", "CloudFrontDomain"):
        assert tpl["Outputs"][name]["Condition"] == "WantsDistribution", name


def test_push_verbs_reach_the_function_and_viewers_use_https(tpl):
    cfg = distribution_config()
    assert cfg["HttpVersion"] == "http2and3"
    for b in [cfg["DefaultCacheBehavior"], *cfg["CacheBehaviors"]]:
        assert set(b["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"}
    for b in behaviours(tpl):
        assert b["ViewerProtocolPolicy"] in ("https-only", "redirect-to-https")
        assert b.get("Compress") is False, "compression must not touch digest-addressed bodies"


def test_origin_secret_header_is_set_and_checked(tpl):
    cfg = tpl["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    assert {o["Id"] for o in cfg["Origins"] if "Id" in o} == {"registry", "token"}
    for params in ({}, {"OriginSecretParameterName": "/m/o"}, {"OriginSecretParameterVersion": "3"}):
        rendered = distribution_config(**params)
        name = params.get("OriginSecretParameterName", "/metahub/metahub-test/origin-verify")
        want = "{{resolve:ssm:" + name + (":3" if "OriginSecretParameterVersion" in params else "") + "}}"
        for origin in rendered["Origins"]:
            assert origin["OriginCustomHeaders"] == [{"HeaderName": "X-Origin-Verify", "HeaderValue": want}], origin["Id"]
    param = tpl["Parameters"]["OriginSecretParameterName"]
    assert param["Default"] == "", "empty: the stack's own name (finding 7)"
    # Every function behind CloudFront knows where to read the value, and may read it.
    for fn in ("RegistryFunction", "TokenFunction"):
        env = render(function_env(tpl, fn), OriginSecretParameterName="/m/o")
        assert env["METAHUB_ORIGIN_SECRET_PARAM"] == "/m/o"
        granted = role_actions(tpl, FUNCTIONS[fn]["role"])["ssm:GetParameters"]
        assert any("OriginSecretParameterName" in json.dumps(r) for r in granted), fn


def test_parameter_names_are_unique_per_stack_and_region(tpl):
    """Finding 7: SSM names default to the stack's own, account-global names carry stack and region."""
    for fn in ("RegistryFunction", "TokenFunction"):
        env = render(function_env(tpl, fn))
        assert env["METAHUB_SIGNING_KEY_PARAM"] == "/metahub/metahub-test/signing-key"
        assert env["METAHUB_ORIGIN_SECRET_PARAM"] == "/metahub/metahub-test/origin-verify"
    for resource, key in (("ViewerHostFunction", "Name"), ("Dashboard", "DashboardName")):
        name = json.dumps(tpl["Resources"][resource]["Properties"][key])
        assert "${AWS::StackName}" in name and "${AWS::Region}" in name, resource
    hsts = json.dumps(tpl["Resources"]["HstsPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]["Name"])
    assert "${AWS::StackName}" in hsts and "${AWS::Region}" in hsts
    rotate = (ROOT / "infra" / "rotate-origin-secret.sh").read_text()
    assert "OriginSecretParameter" in rotate, "the script reads the stack's own parameter name"
    assert "/metahub/origin-verify" not in rotate


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
                    if isinstance(b, dict) and "Fn::Sub" in b:  # the stack's own default name
                        assert b["Fn::Sub"].startswith("/metahub/${AWS::StackName}/"), f"{fn}.{key}"
                        continue
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
        assert render(env["METAHUB_SIGNING_KEY_PARAM"], SigningKeyParameterName="/m/k") == "/m/k"
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
    # The admin function reads only the upstream credentials (finding 5: a matrix of private images), if configured.
    admin_params = json.dumps(role_actions(tpl, "AdminRole")["ssm:GetParameters"])
    assert "UpstreamCredentialsParameterName" in admin_params
    assert "SigningKeyParameterName" not in admin_params and "OriginSecretParameterName" not in admin_params
    assert "METAHUB_SIGNING_KEY_PARAM" not in function_env(tpl, "AdminFunction")
    admin_env = render(function_env(tpl, "AdminFunction"), UpstreamCredentialsParameterName="/m/up")
    assert admin_env["METAHUB_UPSTREAM_CREDENTIALS_PARAM"] == "/m/up"
    assert "METAHUB_UPSTREAM_CREDENTIALS_PARAM" not in render(function_env(tpl, "AdminFunction"))
    conditional = [
        st for _, st in statements(tpl) if "UpstreamCredentialsParameterName" in json.dumps(st)
    ]
    assert conditional and '"HasUpstreamCredentials"' in json.dumps(tpl["Resources"]["RegistryRole"])
    assert '"HasUpstreamCredentials"' in json.dumps(tpl["Resources"]["AdminRole"])
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


STORE_SRC = ROOT / "functions" / "store-dynamodb" / "src"


def store_code() -> str:
    """The DynamoDB store's source, every module of it (keys, codec, the Store impl, table creation)."""
    return "\n".join(p.read_text() for p in sorted(STORE_SRC.glob("*.rs")))


def store_index_name() -> str:
    """The index DynamoStore queries (functions/store-dynamodb), so template and code agree."""
    if not STORE_SRC.exists():
        return "byMachineType"
    m = re.search(r'pub const BY_MACHINE_TYPE_INDEX: &str = "([^"]+)"', store_code())
    assert m, "BY_MACHINE_TYPE_INDEX not found in functions/store-dynamodb/src"
    return m.group(1)


def test_table_matches_the_store_code():
    code = store_code()
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


def test_admin_may_query_the_partitions_it_reads_on_the_table(tpl):
    # GET /admin/changes queries pk=CHANGES on the table, the admin page's watched images and matrix pk=WATCHED
    # (finding 1 of issue 28: the grant named CHANGES only); a grant on the index alone is AccessDenied. Every Query
    # the store code makes on the table, and only those partitions (tests/iam_check.py checks the calls themselves).
    code = store_code()
    constants = dict(re.findall(r'const ([A-Z_]+_PK): &str = "([^"]+)"', code))
    queried = re.findall(r'\.query\(\)[^;]*?expression_attribute_values\(":pk", s\(([A-Z_]+_PK)\)\)', code, re.S)
    partitions = sorted({constants[c] for c in queried})
    assert partitions == ["CHANGES", "WATCHED"], partitions
    on_table = [st for st in statements_with(tpl, "AdminRole", "dynamodb:Query") if all(table_arn(r) for r in as_list(st["Resource"]))]
    assert len(on_table) == 1, on_table
    assert on_table[0]["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": partitions}}


def test_registry_writes_only_generated_indexes(tpl):
    code = store_code()
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
    # (empty is the stack's own name, never "no parameter")
    assert render(function_env(tpl, "TokenFunction")["METAHUB_SIGNING_KEY_PARAM"]) == "/metahub/metahub-test/signing-key"


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


def test_scripts_run_on_bash_3_2_and_keep_passwords_off_command_lines():
    """Finding 9: macOS ships bash 3.2 (no mapfile, no associative arrays); smoke.sh never passes the password as an
    argument; deploy.sh runs the smoke test when given an account, and checks the concurrency quota."""
    for script in (ROOT / "infra").glob("*.sh"):
        text = script.read_text()
        for feature in ("mapfile", "readarray", "declare -A", "local -n", "${!", ",,}", "^^}"):
            assert feature not in text, f"{script.name}: {feature} needs bash 4"
    smoke = (ROOT / "infra" / "smoke.sh").read_text()
    assert '-u "$login:$password"' not in smoke and "--config" in smoke
    deploy = (ROOT / "infra" / "deploy.sh").read_text()
    assert "--smoke-login" in deploy and 'bash "$here/smoke.sh"' in deploy
    assert "get-account-settings" in deploy and "L-B99A9384" in deploy


def test_timeouts_derive_from_the_one_function_timeout(tpl):
    glob = tpl["Globals"]["Function"]
    assert glob["Timeout"] == {"Ref": "FunctionTimeout"}
    assert glob["Environment"]["Variables"]["METAHUB_FUNCTION_TIMEOUT"] == {"Ref": "FunctionTimeout"}
    for fn in ("RegistryFunction", "TokenFunction"):
        props = tpl["Resources"][fn]["Properties"]
        assert "Timeout" not in props, f"{fn}: one timeout, set in Globals"
    for fn in FUNCTIONS:
        env = function_env(tpl, fn)
        assert not {"METAHUB_UPSTREAM_TIMEOUT"} & set(env), f"{fn}: derived, not set by hand"
    assert tpl["Parameters"]["FunctionTimeout"]["MaxValue"] <= 60, "CloudFront's origin read timeout follows it"
    # Finding 5: the admin function has its own, longer timeout, passed to it the same way.
    admin = tpl["Resources"]["AdminFunction"]["Properties"]
    assert admin["Timeout"] == {"Ref": "AdminFunctionTimeout"}
    assert function_env(tpl, "AdminFunction")["METAHUB_FUNCTION_TIMEOUT"] == {"Ref": "AdminFunctionTimeout"}
    assert tpl["Parameters"]["AdminFunctionTimeout"]["Default"] > tpl["Parameters"]["FunctionTimeout"]["Default"]


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
    deploy = (ROOT / "infra" / "deploy.sh").read_text().lower()
    assert "second pass" not in deploy and "second deploy" not in deploy


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
    assert acl["Condition"] == "CreatesWebAcl"
    assert acl["Properties"]["Scope"] == "CLOUDFRONT"
    (rule,) = acl["Properties"]["Rules"]
    rate = rule["Statement"]["RateBasedStatement"]
    assert rate["Limit"] == {"Ref": "TokenRateLimit"} and rate["AggregateKeyType"] == "IP"
    match = rate["ScopeDownStatement"]["ByteMatchStatement"]
    assert match["SearchString"] == "/token" and match["FieldToMatch"] == {"UriPath": {}}
    assert "WebACLId" not in distribution_config()
    assert distribution_config(TokenRateLimit=1000)["WebACLId"] == "<TokenRateLimitWebAcl.Arn>"
    assert "TokenRateLimitNeedsUsEast1" in tpl["Rules"]


# ---------------------------------------------------------------- issue 28: edge hardening, concurrency, alarms

def test_web_acl_arn_parameter(tpl):
    arn = "arn:aws:wafv2:us-east-1:123456789012:global/webacl/managed/0123"
    assert distribution_config(WebAclArn=arn)["WebACLId"] == arn
    assert re.fullmatch(tpl["Parameters"]["WebAclArn"]["AllowedPattern"], arn)
    assert not re.fullmatch(tpl["Parameters"]["WebAclArn"]["AllowedPattern"], arn.replace("global", "regional"))
    rule = tpl["Rules"]["OneWebAcl"]
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "TokenRateLimit"}, 0]}


def test_viewer_tls_and_hsts(tpl):
    custom = distribution_config(DomainName="registry.example.com",
                                 CertificateArn="arn:aws:acm:us-east-1:123456789012:certificate/x")
    assert custom["ViewerCertificate"]["MinimumProtocolVersion"] == "TLSv1.2_2021"
    assert distribution_config()["ViewerCertificate"] == {"CloudFrontDefaultCertificate": True}
    policy = tpl["Resources"]["HstsPolicy"]
    assert policy["Condition"] == "HasHsts" and tpl["Parameters"]["HstsMaxAge"]["Default"] >= 31536000
    hsts = policy["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]["StrictTransportSecurity"]
    assert hsts["AccessControlMaxAgeSec"] == {"Ref": "HstsMaxAge"} and hsts["Override"] is True
    for b in [distribution_config()["DefaultCacheBehavior"], *distribution_config()["CacheBehaviors"]]:
        assert b["ResponseHeadersPolicyId"] == "metahub-test-HstsPolicy"
    off = distribution_config(HstsMaxAge=0)
    assert all("ResponseHeadersPolicyId" not in b for b in [off["DefaultCacheBehavior"], *off["CacheBehaviors"]])


def test_access_logs_are_optional(tpl):
    assert "Logging" not in distribution_config()
    logging = distribution_config(AccessLogBucket="my-logs.s3.amazonaws.com")["Logging"]
    assert logging == {"Bucket": "my-logs.s3.amazonaws.com", "Prefix": "metahub-test/", "IncludeCookies": False}
    assert not re.fullmatch(tpl["Parameters"]["AccessLogBucket"]["AllowedPattern"], "my-logs")


def test_reserved_concurrency_is_optional(tpl):
    assert tpl["Parameters"]["ReservedConcurrency"]["Default"] == 0
    for fn in ("RegistryFunction", "TokenFunction"):
        props = tpl["Resources"][fn]["Properties"]
        assert render(props["ReservedConcurrentExecutions"], ReservedConcurrency=50) == "50"
        assert "ReservedConcurrentExecutions" not in render(props)
    assert "ReservedConcurrentExecutions" not in tpl["Resources"]["AdminFunction"]["Properties"]


ALARMS = {"RegistryErrorsAlarm": ("AWS/Lambda", "Errors"), "RegistryThrottlesAlarm": ("AWS/Lambda", "Throttles"),
          "TokenErrorsAlarm": ("AWS/Lambda", "Errors"), "TokenThrottlesAlarm": ("AWS/Lambda", "Throttles"),
          "TableReadThrottlesAlarm": ("AWS/DynamoDB", "ReadThrottleEvents"),
          "TableWriteThrottlesAlarm": ("AWS/DynamoDB", "WriteThrottleEvents"),
          "CloudFront5xxAlarm": ("AWS/CloudFront", "5xxErrorRate")}


def test_alarms_go_to_the_optional_topic_and_have_a_runbook_entry(tpl):
    assert tpl["Parameters"]["AlarmTopicArn"]["Default"] == ""
    alarms = resources(tpl, "AWS::CloudWatch::Alarm")
    assert set(alarms) == set(ALARMS)
    runbook = (ROOT / "docs" / "deploy.md").read_text()
    assert "## Alarms fired" in runbook
    for name, (namespace, metric) in ALARMS.items():
        props = alarms[name]["Properties"]
        assert (props["Namespace"], props["MetricName"]) == (namespace, metric), name
        assert props["AlarmActions"] == [{"Ref": "AlarmTopicArn"}] and props["OKActions"] == [{"Ref": "AlarmTopicArn"}]
        assert props["TreatMissingData"] == "notBreaching"
        assert f"### {name}" in runbook, f"the runbook says what {name} means"
        assert name in json.dumps(props["AlarmDescription"])
        assert alarms[name]["Condition"] == ("HasCloudFrontAlarm" if namespace == "AWS/CloudFront" else "HasAlarms")
    assert alarms["CloudFront5xxAlarm"]["Properties"]["Threshold"] == {"Ref": "CloudFront5xxRateThreshold"}
    assert tpl["Parameters"]["CloudFront5xxRateThreshold"]["Default"] == 5
    # CloudFront's metrics exist in us-east-1 only
    assert {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]} in tpl["Conditions"]["HasCloudFrontAlarm"]["Fn::And"]
    functions = {json.dumps(alarms[n]["Properties"]["Dimensions"]) for n in ALARMS if n.startswith(("Registry", "Token"))}
    assert functions == {json.dumps([{"Name": "FunctionName", "Value": {"Ref": f}}]) for f in ("RegistryFunction", "TokenFunction")}


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
