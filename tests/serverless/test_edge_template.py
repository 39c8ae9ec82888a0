"""The edge stand-in reads template.yaml as CloudFront would deploy it (pure code: no process started)."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

import edge as edge_mod
from runtime_api import Outcome

PARAMS = {"OriginSecretParameterName": "/t/origin", "ServiceName": "svc"}


def distribution(template=None, resolved: list | None = None):
    def resolve(name: str) -> str:
        if resolved is not None:
            resolved.append(name)
        return f"secret-of-{name}"
    return edge_mod.read_distribution(resolve, PARAMS, template)


def test_behaviours_route_to_the_functions_of_the_template():
    d = distribution()
    assert d.targets[d.behaviour_for("/v2/").origin_id].binary == "metahub-registry"
    assert d.targets[d.behaviour_for("/v2/org/app/manifests/latest").origin_id].binary == "metahub-registry"
    assert d.targets[d.behaviour_for("/token").origin_id].binary == "metahub-token"
    # no behaviour matches: the default one (the registry)
    assert d.behaviour_for("/v2").path_pattern == "*"
    assert d.behaviour_for("/tokens").path_pattern == "*"
    for b in d.behaviours:
        assert {"GET", "HEAD", "POST"} <= b.allowed_methods
        assert not b.forwards_host, "AllViewerExceptHostHeader: the Function URL's own domain is the Host"
    assert {t.timeout for t in d.targets.values()} == {10.0}


def test_origin_secret_header_is_resolved_from_ssm_on_every_origin():
    resolved: list[str] = []
    d = distribution(resolved=resolved)
    assert set(resolved) == {"/t/origin"}
    for origin in d.targets:
        assert d.origin_headers[origin] == {"X-Origin-Verify": "secret-of-/t/origin"}
    versioned = edge_mod.read_distribution(lambda n: n, {**PARAMS, "OriginSecretParameterVersion": "3"})
    assert set(versioned.origin_headers["token"].values()) == {"/t/origin:3"}


def test_what_the_stand_in_does_not_model_is_refused():
    template = edge_mod.load_template()
    for change in ({"Compress": True}, {"CachePolicyId": "658327ea-f89d-4fab-a63d-7e88639e58f6"},
                   {"OriginRequestPolicyId": "88a5eaf4-2fd4-4709-b370-b4c650ea3fcf"},
                   {"FunctionAssociations": [{"EventType": "viewer-request", "FunctionARN": "x"}]},
                   {"LambdaFunctionAssociations": [{"EventType": "origin-request", "LambdaFunctionARN": "x"}]}):
        t = copy.deepcopy(template)
        t_dist = next(r for r in t["Resources"].values() if r["Type"] == "AWS::CloudFront::Distribution")
        t_dist["Properties"]["DistributionConfig"]["CacheBehaviors"][0].update(change)
        with pytest.raises(NotImplementedError):
            distribution(t)


def outcome(payload, kind: str = "response") -> Outcome:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Outcome("id", kind, body, {}, 0.0)


def test_function_url_response_conversion():
    r = edge_mod.function_url_response("GET", outcome({"statusCode": 307, "headers": {"location": "http://s/x", "content-length": "99"},
                                                       "cookies": ["a=1"], "body": "aGk=", "isBase64Encoded": True}))
    assert r.status == 307 and r.body == b"hi"
    assert ("location", "http://s/x") in r.headers and ("Set-Cookie", "a=1") in r.headers
    assert ("Content-Length", "2") in r.headers, "a Function URL sends the length of the body it sends"
    head = edge_mod.function_url_response("HEAD", outcome({"statusCode": 200, "headers": {"content-length": "99"}, "body": ""}))
    assert ("Content-Length", "99") in head.headers and head.body == b""
    # multiValueHeaders are not part of a Function URL's response format
    mv = edge_mod.function_url_response("GET", outcome({"statusCode": 200, "multiValueHeaders": {"x": ["1", "2"]}}))
    assert not [h for h in mv.headers if h[0] == "x"]
    assert edge_mod.function_url_response("GET", outcome(b'{"errorMessage":"boom"}', "error")).status == 502
    assert edge_mod.function_url_response("GET", None).status == 502
    assert edge_mod.function_url_response("GET", outcome(b"[1]")).body == b"[1]", "not the response format: the payload is the body"
    big = {"statusCode": 200, "body": "x" * edge_mod.MAX_RESPONSE_PAYLOAD}
    assert edge_mod.function_url_response("GET", outcome(big)).status == 502


VIEWER_HOST_CODE = """function handler(event) {
  var request = event.request;
  var host = request.headers.host;
  if (host) { request.headers['x-forwarded-host'] = { value: host.value }; }
  else { delete request.headers['x-forwarded-host']; }
  return request;
}
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the CloudFront Function")
def test_viewer_request_function_runs_on_each_request():
    """A viewer-request CloudFront Function (#11's copies Host into X-Forwarded-Host) is run, in node, before the
    origin request is built: its header reaches the function, a client's own value does not."""
    template = copy.deepcopy(edge_mod.load_template())
    template["Resources"]["ViewerHost"] = {"Type": "AWS::CloudFront::Function", "Properties": {"FunctionCode": VIEWER_HOST_CODE}}
    dist = next(r for r in template["Resources"].values() if r["Type"] == "AWS::CloudFront::Distribution")
    association = [{"EventType": "viewer-request", "FunctionARN": {"Fn::GetAtt": ["ViewerHost", "FunctionMetadata.FunctionARN"]}}]
    dist["Properties"]["DistributionConfig"]["DefaultCacheBehavior"]["FunctionAssociations"] = association
    for b in dist["Properties"]["DistributionConfig"]["CacheBehaviors"]:
        b["FunctionAssociations"] = association
    d = distribution(template)
    behaviour = d.behaviour_for("/token")
    assert behaviour.viewer_request == VIEWER_HOST_CODE
    headers = edge_mod.run_viewer_request(behaviour.viewer_request, "GET", "/token?x=1",
                                          [("Host", "registry.example.com"), ("X-Forwarded-Host", "evil"), ("Authorization", "Basic x")], "1.2.3.4")
    forwarded = edge_mod.Edge(d, {}).origin_request_headers(headers, "1.2.3.4", behaviour, behaviour.origin_id)
    assert forwarded["x-forwarded-host"] == "registry.example.com"
    assert forwarded["authorization"] == "Basic x"
    assert forwarded.get("host") is None, "Host itself is still not forwarded"
