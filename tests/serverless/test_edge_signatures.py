"""A publisher's sigstore signatures through the serverless path (issue 29): skopeo with a `sigstoreSigned` policy
pulls through the edge stand-in of template.yaml's distribution (HTTPS, the origin secret, Function URL events to the
real Lambda binaries, DynamoDB on moto, a redirecting upstream) and finds the signature of the build chosen for its
machine type, by tag and by child digest; each looked-up signature verifies over the bytes the edge served; an
unsigned image and another key are refused; `.att` attachments and child referrers come through. The scenario is
tests/e2e/test_signatures.py's, run against the edge; the edge's own log records what skopeo looked up."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import creds
from signed_pull import EXPECTED, Front, check_selection_signature, filtered_digest, node_config, publish
# the shared scenario: pytest collects these here, with this module's fixtures
from signed_pull import (  # noqa: F401
    test_an_unsigned_image_and_another_key_are_refused, test_attestations_and_referrers_of_child_digests,
    test_the_filtered_index_carries_no_publisher_signature, test_the_signature_of_the_build_served_is_found_and_verifies,
)



def edge_lookups(edge) -> list[tuple[str, int]]:
    """(reference, status) of every manifest GET/HEAD the edge passed to the registry function, from its log."""
    out = []
    for method, target, status, _origin, _cold in list(edge.log):
        path = target.split("?", 1)[0]
        if "/manifests/" in path:
            out.append((path.rsplit("/manifests/", 1)[1], status))
    return out


@pytest.fixture(scope="module")
def published(workdir, redirecting_upstream, images):
    return publish(workdir, redirecting_upstream.url, images)


@pytest.fixture(scope="module")
def front(edge) -> Front:
    return Front(url=edge.url, host=edge.host, verify=edge.ca_file, lookups=lambda: edge_lookups(edge), creds=creds)


@pytest.fixture(scope="module")
def node(workdir, front, published):
    return node_config(workdir / "edge-signatures-node", front.host, published)


# --------------------------------------------------------------------------------------------- MetaHub's own signature
# The registry function with METAHUB_SELECTION_SIGNING_KEY_PARAM (template.yaml's SelectionSigningKeyParameterName):
# the key comes from SSM, each filtered index is signed once for all instances (the store), every request here on a
# fresh instance included.

SELECTION_KEY_PARAM = "/metahub/selection-signing-key"


@pytest.fixture(scope="module")
def signing_edge(workdir, moto, redirecting_upstream, serve_hub, parameters):
    """An edge like conftest's `edge` (start_edge_for), its registry function also given the selection key's SSM
    parameter; the function instances it started, for their logs."""
    import boto3
    import tempfile
    from pathlib import Path

    import edge as edge_mod
    import tls_ca
    from conftest import TEMPLATE_PARAMETERS, moto_endpoint
    from lambda_harness import full_env, launch_function, ssm_value

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    ssm = boto3.client("ssm", endpoint_url=moto_endpoint(moto), region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    ssm.put_parameter(Name=SELECTION_KEY_PARAM, Type="SecureString", Value=pem.decode(), Overwrite=True)
    distribution = edge_mod.read_distribution(lambda name: ssm_value(moto_endpoint(moto), name), TEMPLATE_PARAMETERS)
    holder: dict = {"functions": []}

    def start_instance(binary: str, name: str):
        env = {**full_env(moto, redirecting_upstream), "METAHUB_STORE": serve_hub.store, "METAHUB_PUBLIC_URL": holder["edge"].url}
        if binary == "metahub-registry":
            env["METAHUB_SELECTION_SIGNING_KEY_PARAM"] = SELECTION_KEY_PARAM
            env["METAHUB_SELECTION_SIGNING_HOST"] = holder["edge"].host  # as template.yaml sets it (DomainName)
        fn = launch_function(workdir, binary, env, f"signing-{name}")[0]
        holder["functions"].append(fn)
        return fn

    certificate = tls_ca.make_certificate(Path(tempfile.mkdtemp(prefix="edge-tls-", dir=workdir)))
    holder["edge"] = edge_mod.start_edge(distribution, start_instance, certificate)
    yield holder["edge"], key, pem, holder["functions"]
    holder["edge"].stop()


def test_the_selection_is_signed_once_through_the_edge(signing_edge, images):
    edge, key, pem, functions = signing_edge
    front = Front(url=edge.url, host=edge.host, verify=edge.ca_file, lookups=lambda: edge_lookups(edge), creds=creds)

    def signed() -> int:
        return sum(fn.proc.log_path.read_text(errors="replace").count("signed a selection") for fn in functions)

    digests = {mt: filtered_digest(front, mt) for mt in sorted(EXPECTED)}
    assert len(set(digests.values())) == 2
    for mt, digest in digests.items():
        check_selection_signature(front, "org/app", digest, mt, key.public_key())
    made = signed()
    assert 1 <= made <= 2 * len(digests), made  # the DynamoDB table may hold signatures of an earlier module run
    # every request on a fresh instance: the signatures come from the table, none is made again
    edge.set_cold_every_request(True)
    try:
        for mt, digest in digests.items():
            assert filtered_digest(front, mt) == digest
            check_selection_signature(front, "org/app", digest, mt, key.public_key())
    finally:
        edge.set_cold_every_request(False)
    assert signed() == made, "a cold instance found the stored signature and signed nothing"
    body = "".join(pem.decode().strip().splitlines()[1:-1])
    for fn in functions:
        log = fn.proc.log_path.read_text(errors="replace")
        assert all(body[i : i + 24] not in log for i in range(0, len(body), 24)), "the key is never logged"
