"""Unit tests of tests/iam_check.py: the policy evaluator, the rendering of template.yaml's roles and the reading of
recorded calls (pure code, no process). The suites that use it: tests/lambda, tests/serverless."""

from __future__ import annotations

import copy
import json

import pytest

import iam_check
from iam_check import Call, Request, evaluate

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/t"


def allow(action, resource, condition=None, sid="S"):
    st = {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": resource}
    if condition:
        st["Condition"] = condition
    return st


def lead(*keys):
    return (("dynamodb:LeadingKeys", tuple(keys)),)


def test_allow_and_implicit_deny():
    policy = [allow("dynamodb:GetItem", TABLE)]
    assert evaluate(policy, Request("dynamodb:GetItem", TABLE)).allowed
    assert evaluate(policy, Request("dynamodb:getitem", TABLE)).allowed, "actions are case-insensitive"
    d = evaluate(policy, Request("dynamodb:PutItem", TABLE))
    assert not d.allowed and "implicit deny" in d.reason
    assert not evaluate(policy, Request("dynamodb:GetItem", TABLE + "/index/i")).allowed, "an index is another resource"
    assert not evaluate(policy, Request("dynamodb:GetItem", TABLE.replace("us-east-1", "eu-west-1"))).allowed


def test_explicit_deny_wins_over_allow():
    policy = [allow(["dynamodb:*"], "arn:aws:dynamodb:*:*:table/*"),
              {"Sid": "NoAccounts", "Effect": "Deny", "Action": "dynamodb:PutItem", "Resource": TABLE,
               "Condition": {"ForAnyValue:StringLike": {"dynamodb:LeadingKeys": ["ACCT#*"]}}}]
    assert evaluate(policy, Request("dynamodb:PutItem", TABLE, lead("MAN#x"))).allowed
    d = evaluate(policy, Request("dynamodb:PutItem", TABLE, lead("ACCT#alice")))
    assert not d.allowed and "explicitly denied by statement NoAccounts" == d.reason
    assert evaluate(policy, Request("dynamodb:Query", TABLE + "/index/x")).allowed, "wildcards in action and resource"


def test_leading_keys_for_all_values():
    policy = [allow("dynamodb:Query", TABLE, {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["CHANGES"]}})]
    assert evaluate(policy, Request("dynamodb:Query", TABLE, lead("CHANGES"))).allowed
    assert not evaluate(policy, Request("dynamodb:Query", TABLE, lead("WATCHED"))).allowed
    assert not evaluate(policy, Request("dynamodb:Query", TABLE, lead("CHANGES", "WATCHED"))).allowed
    # IAM's trap, modelled: ForAllValues over a key the request does not carry (a Scan) holds vacuously
    assert evaluate([allow("dynamodb:Scan", TABLE, {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["X"]}})],
                    Request("dynamodb:Scan", TABLE)).allowed
    like = [allow("dynamodb:PutItem", TABLE, {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["MAN#*"]}})]
    assert evaluate(like, Request("dynamodb:PutItem", TABLE, lead("MAN#org/app@sha256:00"))).allowed
    assert not evaluate(like, Request("dynamodb:PutItem", TABLE, lead("META"))).allowed


def test_single_valued_operators_and_if_exists():
    st = allow("ssm:GetParameters", "*", {"StringEquals": {"aws:RequestedRegion": "us-east-1"}})
    assert evaluate([st], Request("ssm:GetParameters", "x", (("aws:RequestedRegion", ("us-east-1",)),))).allowed
    assert not evaluate([st], Request("ssm:GetParameters", "x")).allowed, "a missing key fails a plain operator"
    st = allow("ssm:GetParameters", "*", {"StringEqualsIfExists": {"aws:RequestedRegion": "us-east-1"}})
    assert evaluate([st], Request("ssm:GetParameters", "x")).allowed
    with pytest.raises(NotImplementedError):
        evaluate([allow("a:b", "*", {"NumericLessThan": {"k": "1"}})], Request("a:b", "x", (("k", ("0",)),)))


def test_not_action_and_not_resource():
    policy = [{"Effect": "Allow", "NotAction": "dynamodb:DeleteItem", "NotResource": TABLE + "/index/*"}]
    assert evaluate(policy, Request("dynamodb:GetItem", TABLE)).allowed
    assert not evaluate(policy, Request("dynamodb:DeleteItem", TABLE)).allowed
    assert not evaluate(policy, Request("dynamodb:Query", TABLE + "/index/i")).allowed


SCHEMA = {None: "pk", "byMachineType": "machineType"}


def test_calls_become_the_requests_iam_authorises():
    q = Call("dynamodb", "Query", "eu-west-1", {"TableName": "t", "KeyConditionExpression": "#p = :v AND sk > :s",
                                                 "ExpressionAttributeNames": {"#p": "pk"},
                                                 "ExpressionAttributeValues": {":v": {"S": "WATCHED"}, ":s": {"S": ""}}})
    (r,) = iam_check.requests_of(q, SCHEMA)
    assert r == Request("dynamodb:Query", "arn:aws:dynamodb:eu-west-1:123456789012:table/t", lead("WATCHED"))
    idx = Call("dynamodb", "Query", "us-east-1", {"TableName": "t", "IndexName": "byMachineType",
                                                   "KeyConditionExpression": "machineType = :m",
                                                   "ExpressionAttributeValues": {":m": {"S": "skylake"}}})
    assert iam_check.requests_of(idx, SCHEMA) == [Request("dynamodb:Query", TABLE + "/index/byMachineType", lead("skylake"))]
    tx = Call("dynamodb", "TransactWriteItems", "us-east-1", {"TransactItems": [
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "ACCT#a"}, "sk": {"S": "ACCT"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "MT#x"}, "sk": {"S": "MT"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "MT#y"}, "sk": {"S": "MT"}}}}]})
    assert [(r.action, r.context) for r in iam_check.requests_of(tx, SCHEMA)] == [
        ("dynamodb:PutItem", lead("ACCT#a")), ("dynamodb:UpdateItem", lead("MT#x")), ("dynamodb:ConditionCheckItem", lead("MT#y"))]
    ssm = Call("ssm", "GetParameters", "us-east-1", {"Names": ["/a/key", "/a/origin:3", "plain"]})
    assert [r.resource for r in iam_check.requests_of(ssm, SCHEMA)] == [
        "arn:aws:ssm:us-east-1:123456789012:parameter/a/key", "arn:aws:ssm:us-east-1:123456789012:parameter/a/origin",
        "arn:aws:ssm:us-east-1:123456789012:parameter/plain"]


def test_parse_call_reads_target_and_region():
    headers = {"x-amz-target": "DynamoDB_20120810.GetItem",
               "authorization": "AWS4-HMAC-SHA256 Credential=test/20250101/eu-central-1/dynamodb/aws4_request, ..."}
    call = iam_check.parse_call(headers, json.dumps({"TableName": "t"}).encode())
    assert (call.service, call.action, call.region) == ("dynamodb", "GetItem", "eu-central-1")
    assert iam_check.parse_call({"x-amz-target": "AmazonSSM.GetParameters"}, b"{}").service == "ssm"


def test_template_roles_render_with_sub_and_conditions():
    params = {"ExistingTableName": "tbl", "SigningKeyParameterName": "/s/key", "OriginSecretParameterName": "/s/origin",
              "UpstreamCredentialsParameterName": "/s/up"}
    roles = iam_check.render_roles(params)
    assert set(roles) == {"metahub-registry", "metahub-token", "metahub-admin"}
    text = json.dumps(roles["metahub-registry"].statements)
    assert "arn:aws:ssm:us-east-1:123456789012:parameter/s/key" in text and "${" not in text
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/tbl"
    reg = roles["metahub-registry"].statements
    assert evaluate(reg, Request("dynamodb:PutItem", arn, lead("MAN#org/app@sha256:0"))).allowed
    assert not evaluate(reg, Request("dynamodb:PutItem", arn, lead("ACCT#x"))).allowed
    assert evaluate(reg, Request("ssm:GetParameters", "arn:aws:ssm:us-east-1:123456789012:parameter/s/up")).allowed
    without = iam_check.render_roles({k: v for k, v in params.items() if k != "UpstreamCredentialsParameterName"})
    assert not evaluate(without["metahub-registry"].statements,
                        Request("ssm:GetParameters", "arn:aws:ssm:us-east-1:123456789012:parameter/s/up")).allowed
    assert not evaluate(roles["metahub-token"].statements, Request("dynamodb:PutItem", arn, lead("META"))).allowed


def test_finding_1_the_admin_page_queries_are_allowed():
    """Issue 28, finding 1: the admin role's Query on the table named only the CHANGES partition."""
    admin = iam_check.render_roles({"ExistingTableName": "tbl"})["metahub-admin"].statements
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/tbl"
    for partition in ("CHANGES", "WATCHED"):
        assert evaluate(admin, Request("dynamodb:Query", arn, lead(partition))).allowed, partition
    assert not evaluate(admin, Request("dynamodb:Query", arn, lead("ACCT#alice"))).allowed
    # ...and the same template with the old grant denies it, as the suites saw
    template = copy.deepcopy(iam_check.load_template())
    for st in template["Resources"]["AdminRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
        if isinstance(st, dict) and st.get("Condition", {}).get("ForAllValues:StringEquals"):
            st["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] = ["CHANGES"]
    old = iam_check.render_roles({"ExistingTableName": "tbl"}, template=template)["metahub-admin"].statements
    assert not evaluate(old, Request("dynamodb:Query", arn, lead("WATCHED"))).allowed


def test_environment_to_template_parameters():
    env = {"METAHUB_STORE": "dynamodb:t", "METAHUB_SIGNING_KEY_PARAM": "/k", "METAHUB_ORIGIN_SECRET_PARAM": "/o"}
    assert iam_check.template_parameters("metahub-token", env)[0] == {
        "ExistingTableName": "t", "SigningKeyParameterName": "/k", "OriginSecretParameterName": "/o"}
    params, why = iam_check.template_parameters("metahub-registry", {"METAHUB_STORE": "dynamodb:t"})
    assert params is None and "METAHUB_SIGNING_KEY_PARAM" in why
