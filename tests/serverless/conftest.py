"""Fixtures for pulls through the serverless path: real clients -> the edge stand-in (`edge.py`, template.yaml's
distribution) -> Function URL events -> the REAL `metahub-registry` / `metahub-token` binaries on the Runtime API
stand-in of tests/lambda -> DynamoDB on moto and a redirecting `docker-registry` upstream.

The components and clients are the e2e harness's own fixtures (tests/e2e/conftest.py, loaded under another module
name: this folder's conftest has the same name, which is why tests/run.sh runs each folder alone); the function
instances are started by tests/lambda's `lambda_harness`. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(HERE), str(TESTS / "lambda"), str(TESTS / "e2e"), str(TESTS)]


from load_module import load_module  # noqa: E402

e2e = load_module("e2e_conftest", TESTS / "e2e" / "conftest.py")
import edge as edge_mod  # noqa: E402
import tls_ca  # noqa: E402
import lambda_harness  # noqa: E402
from lambda_harness import (  # noqa: E402
    ORIGIN_SECRET_PARAM, SERVICE, SIGNING_KEY_PARAM, admin_env, full_env, launch_function, seed_parameters, ssm_value,
)
from sigv4_standin import Refused, Verifier  # noqa: E402

# the e2e fixtures this folder uses (pytest finds fixtures by the names of a conftest's attributes)
workdir = e2e.workdir
upstream = e2e.upstream
redirecting_upstream = e2e.redirecting_upstream
images = e2e.images
moto = e2e.moto
metahub_factory = e2e.metahub_factory
containerd = e2e.containerd
podman = e2e.podman
docker = e2e.docker
creds = e2e.creds
MACHINE_TYPES = e2e.MACHINE_TYPES


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for p in [*e2e._PROCS, *lambda_harness._PROCS]:
            report.sections.append((f"log {p.name} ({p.log_path})", p.tail()))


@pytest.fixture(autouse=True)
def iam_checked():
    """Every AWS call the function instances made during the test is allowed by their role in template.yaml
    (tests/iam_check.py: each instance reaches moto through a recording proxy)."""
    yield
    denied = lambda_harness.iam_check.denied_message()
    if denied:
        pytest.fail(denied, pytrace=False)


def pytest_terminal_summary(terminalreporter):
    lambda_harness.iam_check.terminal_summary(terminalreporter)


def moto_endpoint(moto) -> str:
    return f"http://127.0.0.1:{moto.port}"


# template.yaml parameters as the tests deploy it: the SSM names the functions are given
TEMPLATE_PARAMETERS = {"OriginSecretParameterName": ORIGIN_SECRET_PARAM, "SigningKeyParameterName": SIGNING_KEY_PARAM,
                       "ServiceName": SERVICE}


@pytest.fixture(scope="session")
def serve_hub(metahub_factory, redirecting_upstream, images):
    """`metahub serve` on a DynamoDB (moto) table holding every machine type of the e2e harness and one account each
    (see `creds`); the functions use the same table."""
    return metahub_factory("dynamodb", redirecting_upstream)


@pytest.fixture(scope="session")
def parameters(moto) -> bytes:
    return seed_parameters(moto_endpoint(moto))


SECOND_REGION = "us-west-2"
SECONDARY_REGISTRY_URL = f"https://registryfunction2nd.lambda-url.{SECOND_REGION}.on.aws/"


def start_edge_for(workdir, moto, upstream, table_store: str, resolve_ssm=None, parameters=None) -> edge_mod.Edge:
    """An edge stand-in in front of function instances configured as template.yaml deploys them, with the public
    URL set to the edge's own address (what infra/deploy.sh does with the distribution's domain). With
    `SecondaryRegistryFunctionUrl` in `parameters`, the second region's registry instances run in SECOND_REGION (their
    own table replica and SSM copies, see `replicate_to_second_region`)."""
    resolve = resolve_ssm or (lambda name: ssm_value(moto_endpoint(moto), name))
    distribution = edge_mod.read_distribution(resolve, {**TEMPLATE_PARAMETERS, **(parameters or {})})
    holder: dict[str, edge_mod.Edge] = {}

    def start_instance(binary: str, name: str, region: str = "primary"):
        env = {**full_env(moto, upstream), "METAHUB_STORE": table_store, "METAHUB_PUBLIC_URL": holder["edge"].url}
        if region == "secondary":
            env |= {"AWS_REGION": SECOND_REGION, "AWS_DEFAULT_REGION": SECOND_REGION}
        return launch_function(workdir, binary, env, name)[0]

    certificate = tls_ca.make_certificate(Path(tempfile.mkdtemp(prefix="edge-tls-", dir=workdir)))
    holder["edge"] = edge_mod.start_edge(distribution, start_instance, certificate)
    return holder["edge"]


def replicate_to_second_region(moto, table: str) -> int:
    """What a DynamoDB global table and infra/deploy.sh --secondary-region do, done by hand on moto (which replicates
    nothing): the table's items copied to its replica in SECOND_REGION, and the SSM parameters copied there with the
    same values. Returns the number of items copied."""
    import boto3

    def client(service, region):
        return boto3.client(service, endpoint_url=moto_endpoint(moto), region_name=region, aws_access_key_id="test",
                            aws_secret_access_key="test")

    source, replica = client("dynamodb", "us-east-1"), client("dynamodb", SECOND_REGION)
    described = source.describe_table(TableName=table)["Table"]
    try:
        replica.create_table(TableName=table, BillingMode="PAY_PER_REQUEST", AttributeDefinitions=described["AttributeDefinitions"],
                             KeySchema=described["KeySchema"],
                             GlobalSecondaryIndexes=[{"IndexName": g["IndexName"], "KeySchema": g["KeySchema"],
                                                      "Projection": g["Projection"]} for g in described.get("GlobalSecondaryIndexes", [])])
    except replica.exceptions.ResourceInUseException:
        pass
    copied = 0
    for page in source.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            replica.put_item(TableName=table, Item=item)
            copied += 1
    ssm_a, ssm_b = client("ssm", "us-east-1"), client("ssm", SECOND_REGION)
    for name in (SIGNING_KEY_PARAM, ORIGIN_SECRET_PARAM, lambda_harness.UPSTREAM_CREDENTIALS_PARAM):
        p = ssm_a.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        ssm_b.put_parameter(Name=name, Type=p["Type"], Value=p["Value"], Overwrite=True)
    return copied


@pytest.fixture(scope="session")
def edge(workdir, moto, redirecting_upstream, serve_hub, parameters) -> edge_mod.Edge:
    e = start_edge_for(workdir, moto, redirecting_upstream, serve_hub.store)
    yield e
    e.stop()


# The operator's AWS credentials, the only ones the admin function's AWS_IAM Function URL knows here.
OPERATOR_ACCESS_KEY = "AKIDMETAHUBOPERATOR"
OPERATOR_SECRET_KEY = "serverless/operator+secret/0123456789abcdefghijkl"
OPERATOR_REGION = "us-east-1"
_OPERATOR_VERIFIER = Verifier({OPERATOR_ACCESS_KEY: OPERATOR_SECRET_KEY}, region=OPERATOR_REGION)


def SIGV4_CALLER(method: str, target: str, headers: list[tuple[str, str]], body: bytes, url: str) -> str | None:
    """Lambda's SigV4 check of an AWS_IAM Function URL: the caller's ARN for a correctly signed request, None (403,
    function never invoked) otherwise. tests/sigv4_standin.py recomputes the signature with botocore, independently
    of the CLI's signer."""
    try:
        return _OPERATOR_VERIFIER.verify(method, url + target, dict(headers), body).arn
    except Refused:
        return None


def start_admin_url(workdir, moto, upstream, table_store: str, caller_of=None) -> edge_mod.IamFunctionUrl:
    """The admin function behind its own AWS_IAM Function URL, configured as template.yaml deploys it."""
    distribution = edge_mod.read_distribution(lambda name: ssm_value(moto_endpoint(moto), name), TEMPLATE_PARAMETERS)
    admin = next(t for t in distribution.functions.values() if t.auth_type == "AWS_IAM")

    def start_instance(binary: str, name: str):
        return launch_function(workdir, binary, {**admin_env(moto, upstream), "METAHUB_STORE": table_store}, name)[0]

    return edge_mod.start_iam_function_url(admin, start_instance, caller_of or SIGV4_CALLER)


@pytest.fixture
def cold_edge(edge):
    """The edge with every request on a fresh function instance, for one test."""
    edge.set_cold_every_request(True)
    yield edge
    edge.set_cold_every_request(False)


# --------------------------------------------------------------------------------------------- the client matrix
# Each entry pulls REF as CREDS and returns the variant label of what it got (config label == layer text). The edge
# serves HTTPS with a certificate of a test CA: every client pulls with TLS verification off (skopeo and podman
# --tls-verify=false, ctr --skip-verify; Docker Engine treats 127.0.0.0/8 as an insecure registry, which accepts any
# certificate).


def _pull_skopeo(request, ref: str, creds_: tuple[str, str], tmp_path: Path) -> str:
    label, text, _ = e2e.skopeo_copy_variant(ref, tmp_path / "skopeo", creds_)
    assert label == text
    return label


def _pull_podman(request, ref: str, creds_: tuple[str, str], tmp_path: Path) -> str:
    return request.getfixturevalue("podman").pull_variant(ref, creds_)


def _pull_ctr(request, ref: str, creds_: tuple[str, str], tmp_path: Path) -> str:
    c = request.getfixturevalue("containerd")
    ns = c.namespace()
    c.pull(ref, ns, user=":".join(creds_), plain_http=False)  # the edge is HTTPS-only, with a private CA
    label, text, _ = c.pulled_variant(ref, ns)
    assert label == text
    return label


def _pull_docker(request, ref: str, creds_: tuple[str, str], tmp_path: Path) -> str:
    engine = request.getfixturevalue("docker")
    client, _ = engine.login(ref.split("/", 1)[0], creds_)  # `docker login`, then the pull reuses its credentials
    pulled = client.pull(ref)
    assert pulled.label == pulled.text
    return pulled.label


CLIENTS = {
    "skopeo": _pull_skopeo,
    "podman": _pull_podman,
    "ctr": _pull_ctr,
    "docker": _pull_docker,
}
