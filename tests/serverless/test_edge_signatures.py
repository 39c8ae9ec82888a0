"""A publisher's sigstore signatures through the serverless path (issue 29): skopeo with a `sigstoreSigned` policy
pulls through the edge stand-in of template.yaml's distribution (HTTPS, the origin secret, Function URL events to the
real Lambda binaries, DynamoDB on moto, a redirecting upstream) and finds the signature of the build chosen for its
machine type, by tag and by child digest; each looked-up signature verifies over the bytes the edge served; an
unsigned image and another key are refused; `.att` attachments and child referrers come through. The scenario is
tests/e2e/test_signatures.py's, run against the edge; the edge's own log records what skopeo looked up."""

from __future__ import annotations

import pytest

from conftest import creds
from signed_pull import (
    EXPECTED, Front, check_attestations_and_child_referrers, check_filtered_index_has_no_publisher_signature,
    check_signed_pull, check_unsigned_and_other_key_refused, publish, registries_d, sigstore_policy,
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
    d = workdir / "edge-signatures-node"
    d.mkdir(exist_ok=True)
    regd = registries_d(d / "registries.d", front.host)
    good = sigstore_policy(d / "policy.json", front.host, published.upstream_host, published.public_key_file)
    wrong = sigstore_policy(d / "policy-other-key.json", front.host, published.upstream_host, published.other_public_key_file)
    return {"registries.d": regd, "policy": good, "policy-other-key": wrong}


@pytest.mark.parametrize("how", ["tag", "child-digest"])
@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
def test_the_signature_of_the_build_served_is_found_and_verifies(front, published, node, images, machine_type, how, tmp_path):
    check_signed_pull(front, published, node, images, machine_type, how, tmp_path)


def test_an_unsigned_image_and_another_key_are_refused(front, published, node, images, tmp_path):
    check_unsigned_and_other_key_refused(front, published, node, images, tmp_path)


def test_the_filtered_index_carries_no_publisher_signature(front, published):
    check_filtered_index_has_no_publisher_signature(front, published)


def test_attestations_and_referrers_of_child_digests(front, published, images):
    check_attestations_and_child_referrers(front, published, images)
