"""A publisher's sigstore signatures pulled through a MetaHub front (`metahub serve`, or the serverless edge), for
tests/e2e/test_signatures.py and tests/serverless/test_edge_signatures.py.

The publisher copies org/app:latest (every build and the index) to org/signed:latest on the upstream and signs each
instance and the index, as `skopeo copy --all --sign-by-sigstore-private-key` does: with real skopeo when it can
sign, else (Debian's containers/image has sigstore patched out) by writing the `sha256-<hex>.sig` attachments exactly
as containers/image writes them (sigstore_sign.py). A node then pulls through the front with skopeo, a
`sigstoreSigned` policy (`remapIdentity` from the front's name to the upstream's) and `use-sigstore-attachments` for
the front's host in registries.d. skopeo looks up the signatures of the build it copies; Debian's skopeo stops at
the crypto step ("Debian-local change: sigstore disabled"), so each looked-up signature is then verified here, over
the bytes the front served, with the `cryptography` package.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

import registry_push
import sigstore_sign

REPO = "org/signed"  # the signed copy of org/app on the upstream
UNSIGNED_REPO = "org/app"  # the same builds, never signed
PASSPHRASE = b"e2e cosign passphrase, not a secret"
SKOPEO_SIGSTORE_DISABLED = "sigstore disabled"  # Debian's containers/image 5.23 patch
CMD_TIMEOUT = 120


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=CMD_TIMEOUT, text=True, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {CMD_TIMEOUT}s: {' '.join(cmd)}\n{e.stderr!r}") from None


def registries_d(directory: Path, host: str) -> Path:
    """A registries.d that reads and writes sigstore attachments for `host`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{host.replace(':', '_')}.yaml").write_text(f"docker:\n  {host}:\n    use-sigstore-attachments: true\n")
    return directory


def open_policy(directory: Path) -> Path:
    path = directory / "policy-open.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def sigstore_policy(path: Path, front_host: str, upstream_host: str, public_key: Path) -> Path:
    """containers-policy.json(5): everything rejected but the front's images signed by `public_key` for the same
    repository on the upstream (remapIdentity: the front's name is the upstream's name under another host)."""
    path.write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {front_host: [{
            "type": "sigstoreSigned",
            "keyPath": str(public_key),
            "signedIdentity": {"type": "remapIdentity", "prefix": front_host, "signedPrefix": upstream_host},
        }]}},
    }))
    return path


@dataclass
class Published:
    """org/signed on one upstream: what was signed, by whom, with which key."""

    upstream_url: str
    upstream_host: str
    key: sigstore_sign.KeyPair
    other_key: sigstore_sign.KeyPair
    index_digest: str
    children: dict[str, str]  # variant -> digest of the build
    signed_by: str  # "skopeo" or "containers/image's attachment format, written by the test"
    files: Path  # public keys as files
    skopeo_refusal: str = ""  # what skopeo said when asked to sign

    def reference(self) -> str:
        return f"{self.upstream_host}/{REPO}:latest"

    @property
    def public_key_file(self) -> Path:
        return self.files / "publisher.pub"

    @property
    def other_public_key_file(self) -> Path:
        return self.files / "other.pub"


_PUBLISHED: dict[str, Published] = {}


def node_config(directory: Path, front_host: str, published: "Published") -> dict[str, Path]:
    """A node's configuration: registries.d with sigstore attachments for the front, a policy for the publisher's
    key and one for another key."""
    directory.mkdir(exist_ok=True)
    return {
        "registries.d": registries_d(directory / "registries.d", front_host),
        "policy": sigstore_policy(directory / "policy.json", front_host, published.upstream_host,
                                  published.public_key_file),
        "policy-other-key": sigstore_policy(directory / "policy-other-key.json", front_host, published.upstream_host,
                                            published.other_public_key_file),
    }


def publish(workdir: Path, upstream_url: str, images: registry_push.Pushed) -> Published:
    """Sign org/signed on the upstream at `upstream_url` (once per upstream and session)."""
    if upstream_url in _PUBLISHED:
        return _PUBLISHED[upstream_url]
    host = upstream_url.split("://", 1)[1]
    d = workdir / f"publisher-{host.replace(':', '_')}"
    d.mkdir(parents=True, exist_ok=True)
    key = sigstore_sign.generate_key_pair(PASSPHRASE)
    other = sigstore_sign.generate_key_pair(PASSPHRASE)
    (d / "publisher.key").write_bytes(key.private_pem)
    (d / "publisher.key").chmod(0o600)
    (d / "publisher.pass").write_bytes(PASSPHRASE)
    (d / "publisher.pub").write_bytes(key.public_pem)
    (d / "other.pub").write_bytes(other.public_pem)
    policy, regd = open_policy(d), registries_d(d / "registries.d", host)
    src, dest = f"docker://{host}/{UNSIGNED_REPO}:latest", f"docker://{host}/{REPO}:latest"
    base = ["skopeo", "--policy", str(policy), "--registries.d", str(regd), "copy", "--all", "--src-tls-verify=false",
            "--dest-tls-verify=false"]
    signing = _run(base + ["--sign-by-sigstore-private-key", str(d / "publisher.key"), "--sign-passphrase-file",
                           str(d / "publisher.pass"), src, dest])
    refusal = ""
    if signing.returncode == 0:
        signed_by = "skopeo"
    else:
        # Debian: the copy is written, then signing fails; anything else is a real failure
        assert SKOPEO_SIGSTORE_DISABLED in signing.stderr, signing.stderr
        refusal = signing.stderr.strip().splitlines()[-1]
        copy = _run(base + [src, dest])
        assert copy.returncode == 0, copy.stderr
        signed_by = "containers/image's attachment format, written by the test"
    reg = registry_push.Registry(upstream_url)
    r = reg.get_manifest(REPO, "latest")
    assert r.status_code == 200, r.text
    index_digest = registry_push.sha256(r.content)
    assert index_digest == images.tags[UNSIGNED_REPO][2], "skopeo copy --all keeps the index as it is"
    children = {}
    for entry in r.json()["manifests"]:
        variant = images.variant_of_digest(entry["digest"]) or "attestation"
        children[variant] = entry["digest"]
    if signed_by != "skopeo":
        reference = f"{host}/{REPO}:latest"  # what skopeo signs: the destination reference
        for digest in [*children.values(), index_digest]:
            sigstore_sign.push_signature(upstream_url, REPO, digest, reference, key)
    published = Published(upstream_url, host, key, other, index_digest, children, signed_by, d, refusal)
    _PUBLISHED[upstream_url] = published
    return published


# --------------------------------------------------------------------------------------------- the front


@dataclass
class Front:
    """A MetaHub front as a registry client sees it: its URL, host, TLS trust and token realm; `lookups()` is the
    front's own record of the manifest references it answered, [(reference, status)]."""

    url: str
    host: str
    verify: object  # requests' verify: True, False or a CA file
    lookups: Callable[[], list[tuple[str, int]]]
    creds: Callable[[str], tuple[str, str]]
    log_marks: list[int] = field(default_factory=list)

    def token(self, machine_type: str, repo: str = REPO) -> str:
        r = requests.get(f"{self.url}/v2/", timeout=30, verify=self.verify)
        assert r.status_code == 401, r.text
        challenge = dict(re.findall(r'(\w+)="([^"]*)"', r.headers["WWW-Authenticate"]))
        r = requests.get(challenge["realm"], params={"service": challenge["service"], "scope": f"repository:{repo}:pull"},
                         auth=self.creds(machine_type), timeout=30, verify=self.verify)
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def get(self, path: str, token: str, accept: str = registry_push.ALL_MANIFEST_TYPES, method: str = "GET") -> requests.Response:
        return requests.request(method, f"{self.url}/v2/{path}", headers={"Accept": accept, "Authorization": f"Bearer {token}"},
                                allow_redirects=False, timeout=30, verify=self.verify)

    def blob(self, repo: str, digest: str, token: str) -> bytes:
        """A blob as the front serves it: the 307 it answers, followed without its token (as clients do)."""
        r = self.get(f"{repo}/blobs/{digest}", token)
        assert r.status_code == 307, (r.status_code, r.text)
        fetched = requests.get(r.headers["Location"], timeout=30, verify=self.verify)
        assert fetched.status_code == 200, (r.headers["Location"], fetched.status_code)
        assert registry_push.sha256(fetched.content) == digest
        return fetched.content

    def served_child(self, machine_type: str, repo: str = REPO) -> str:
        """The linux/amd64 build the front serves `machine_type` for `repo:latest` (the first such entry)."""
        r = self.get(f"{repo}/manifests/latest", self.token(machine_type, repo))
        assert r.status_code == 200, r.text
        entries = [m for m in r.json()["manifests"] if m.get("platform", {}).get("architecture") == "amd64"
                   and m.get("platform", {}).get("os") == "linux"]
        return entries[0]["digest"]


# --------------------------------------------------------------------------------------------- the node's pull


@dataclass
class Pull:
    outcome: str  # "accepted", "unsigned", "bad-signature", "sigstore-disabled"
    looked_up: list[str]  # manifest digests whose `.sig` attachment skopeo asked the front for, in order
    stderr: str


SIG_LOOKUP = re.compile(r"GET https?://[^ ]+/v2/[^ ]+/manifests/sha256-([0-9a-f]{64})\.sig")


def skopeo_pull(front: Front, ref: str, machine_type: str, policy: Path, regd: Path, dest: Path) -> Pull:
    """`skopeo copy docker://REF dir:DEST` as `machine_type` under `policy`, with skopeo's own log of what it asked."""
    creds = ":".join(front.creds(machine_type))
    p = _run(["skopeo", "--debug", "--policy", str(policy), "--registries.d", str(regd), "copy", "--src-tls-verify=false",
              "--src-creds", creds, f"docker://{ref}", f"dir:{dest}"])
    looked_up = ["sha256:" + m.group(1) for m in SIG_LOOKUP.finditer(p.stderr)]
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    if p.returncode == 0:
        outcome = "accepted"
    elif SKOPEO_SIGSTORE_DISABLED in last:
        outcome = "sigstore-disabled"
    elif "A signature was required, but no signature exists" in last:
        outcome = "unsigned"
    elif "cryptographic signature verification failed" in last or "signature" in last.lower():
        outcome = "bad-signature"
    else:
        raise AssertionError(f"skopeo failed otherwise: {last}\n{p.stderr[-3000:]}")
    assert creds not in p.stderr, "skopeo's debug output is not where credentials go"
    return Pull(outcome, looked_up, p.stderr)


def verify_served_signatures(front: Front, published: Published, digest: str, machine_type: str, pulled: str,
                             key: sigstore_sign.KeyPair | None = None) -> list[dict]:
    """Every signature the front serves for `digest` (its `.sig` attachment and the payload blobs the front points
    to), verified over those exact bytes against `key` (the publisher's by default) with the policy's identity
    rule: `pulled` (the front's `repo:tag` or `repo@digest`) remapped to the upstream's name. Returns the payloads; raises InvalidSignature otherwise."""
    token = front.token(machine_type)
    r = front.get(f"{REPO}/manifests/{sigstore_sign.attachment_tag(digest)}", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 200, (digest, r.status_code, r.text)
    upstream_bytes = registry_push.Registry(published.upstream_url).get_manifest(
        REPO, sigstore_sign.attachment_tag(digest), registry_push.OCI_MANIFEST).content
    assert r.content == upstream_bytes, "the attachment is served verbatim"
    assert r.headers["Docker-Content-Digest"] == registry_push.sha256(r.content)
    manifest = r.json()
    assert manifest["mediaType"] == registry_push.OCI_MANIFEST
    config = json.loads(front.blob(REPO, manifest["config"]["digest"], token))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"] for layer in manifest["layers"]]}
    identity = sigstore_sign.remap_identity(pulled, front.host, published.upstream_host)
    payloads = []
    for layer in manifest["layers"]:
        assert layer["mediaType"] == sigstore_sign.SIMPLESIGNING, layer
        body = front.blob(REPO, layer["digest"], token)
        payloads.append(sigstore_sign.verify(body, layer["annotations"][sigstore_sign.SIGNATURE_ANNOTATION],
                                             (key or published.key).public_key(), digest, identity))
    assert payloads, "an attachment with no signature"
    return payloads


# --------------------------------------------------------------------------------------------- the scenario
# The tests below are collected where they are imported: tests/e2e/test_signatures.py runs them against `metahub
# serve` and tests/serverless/test_edge_signatures.py against the edge, each with its own `front`, `published`,
# `node` and `images` fixtures.

# machine type -> the build it is served of org/app (tests/e2e/test_pull.py's EXPECTED_AMD64)
EXPECTED = {"skylake": "cpu-skylake", "zen2": "cpu-x86_64_v3"}
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.mark.parametrize("how", ["tag", "child-digest"])
@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
def test_the_signature_of_the_build_served_is_found_and_verifies(front, published, node, images, machine_type, how,
                                                                 tmp_path):
    """The scenario of one pull: skopeo asks for the signature of exactly the build the front
    serves the machine type, the front answers it, and it verifies (publisher's key) or not (another key)."""
    child = images.images[EXPECTED[machine_type]].digest
    assert front.served_child(machine_type) == child
    ref = f"{front.host}/{REPO}:latest" if how == "tag" else f"{front.host}/{REPO}@{child}"
    seen = len(front.lookups())
    pull = skopeo_pull(front, ref, machine_type, node["policy"], node["registries.d"], tmp_path / "pulled")
    # Real skopeo accepts it; Debian's stops at the crypto step, after the lookup, which is checked below instead.
    assert pull.outcome in {"accepted", "sigstore-disabled"}, pull.stderr[-2000:]
    assert pull.looked_up == [child], f"skopeo looked up {pull.looked_up}, not the build it copies ({child})"
    answered = [(r, s) for r, s in front.lookups()[seen:] if r.endswith(".sig")]
    assert answered == [(sigstore_sign.attachment_tag(child), 200)], answered
    payloads = verify_served_signatures(front, published, child, machine_type, ref)
    assert [p["critical"]["identity"]["docker-reference"] for p in payloads] == [published.reference()]
    with pytest.raises(sigstore_sign.InvalidSignature):
        verify_served_signatures(front, published, child, machine_type, ref, key=published.other_key)


def test_an_unsigned_image_and_another_key_are_refused(front, published, node, images, tmp_path):
    # org/app holds the same builds, never signed: refused, after a lookup the front answered 404
    child = images.images[EXPECTED["skylake"]].digest
    seen = len(front.lookups())
    pull = skopeo_pull(front, f"{front.host}/{UNSIGNED_REPO}:latest", "skylake", node["policy"], node["registries.d"],
                       tmp_path / "unsigned")
    assert pull.outcome == "unsigned", pull.stderr[-2000:]
    assert pull.looked_up == [child]
    assert [(r, s) for r, s in front.lookups()[seen:] if r.endswith(".sig")] == [(sigstore_sign.attachment_tag(child), 404)]
    # a policy for another key: never accepted (real skopeo: the signature fails; Debian's: sigstore disabled), and
    # the signature skopeo found does not verify against that key
    pull = skopeo_pull(front, f"{front.host}/{REPO}:latest", "skylake", node["policy-other-key"], node["registries.d"],
                       tmp_path / "other-key")
    assert pull.outcome in {"bad-signature", "sigstore-disabled"}, pull.stderr[-2000:]
    assert pull.looked_up == [child]
    with pytest.raises(sigstore_sign.InvalidSignature):
        verify_served_signatures(front, published, child, "skylake", f"{front.host}/{REPO}:latest", key=published.other_key)


def test_the_filtered_index_carries_no_publisher_signature(front, published):
    """What does not verify through a filtering front: the publisher signed the upstream index, the node's tag
    resolves to the filtered index, which nobody signed (docs/signatures.md)."""
    token = front.token("skylake")
    filtered = front.get(f"{REPO}/manifests/latest", token, method="HEAD").headers["Docker-Content-Digest"]
    assert filtered != published.index_digest
    r = front.get(f"{REPO}/manifests/{sigstore_sign.attachment_tag(filtered)}", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 404, r.text
    # the upstream index's own signature is still there, under the upstream digest, and verifies
    verify_served_signatures(front, published, published.index_digest, "skylake", f"{front.host}/{REPO}@{published.index_digest}")


def test_attestations_and_referrers_of_child_digests(front, published, images):
    """cosign's `.att` attachment of a child, and the child's referrers (the OCI 1.1 way to attach), through the
    front; a child nothing refers to has an empty referrers index."""
    child = images.images[EXPECTED["zen2"]].digest
    sigstore_sign.push_attestation(published.upstream_url, REPO, child, published.key, {"builder": "e2e"})
    token = front.token("zen2")
    r = front.get(f"{REPO}/manifests/{child.replace(':', '-', 1)}.att", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 200, r.text
    layer = r.json()["layers"][0]
    assert layer["mediaType"] == sigstore_sign.IN_TOTO
    statement = sigstore_sign.verify_dsse(front.blob(REPO, layer["digest"], token), published.key.public_key())
    assert statement["subject"][0]["digest"] == {"sha256": child.split(":", 1)[1]}
    with pytest.raises(sigstore_sign.InvalidSignature):
        sigstore_sign.verify_dsse(front.blob(REPO, layer["digest"], token), published.other_key.public_key())

    size = len(images.images[EXPECTED["zen2"]].manifest)
    entry = registry_push.push_referrer(published.upstream_url, REPO, child, size, COSIGN_SIGNATURE,
                                        b'{"signed":"' + child.encode() + b'"}', subject_media_type=registry_push.OCI_MANIFEST)
    r = front.get(f"{REPO}/referrers/{child}", token, registry_push.OCI_INDEX)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == registry_push.OCI_INDEX
    assert r.json()["manifests"] == [entry]
    r = front.get(f"{REPO}/referrers/{child}?artifactType={urllib.parse.quote(COSIGN_SIGNATURE, safe='')}", token, registry_push.OCI_INDEX)
    assert r.status_code == 200 and r.headers["OCI-Filters-Applied"] == "artifactType"
    assert r.json()["manifests"] == [entry]
    other = images.images[EXPECTED["skylake"]].digest
    r = front.get(f"{REPO}/referrers/{other}", front.token("skylake"), registry_push.OCI_INDEX)
    assert r.status_code == 200, r.text
    assert r.json() == {"schemaVersion": 2, "mediaType": registry_push.OCI_INDEX, "manifests": []}


# --------------------------------------------------------------------------------------------- MetaHub's own signature
# (`--selection-signing-key`: tests/e2e/test_selection_signature.py, tests/serverless/test_edge_signatures.py)


def check_selection_signature(front: Front, repo: str, digest: str, machine_type: str, public: ec.EllipticCurvePublicKey) -> dict:
    """MetaHub's `.sig` of `digest`, its payload and config served from the store (200, not 307), the payload
    naming `digest` as pulled through the front, its P-256 signature valid for `public`. Returns the manifest."""
    token = front.token(machine_type, repo)
    r = front.get(f"{repo}/manifests/{sigstore_sign.attachment_tag(digest)}", token, registry_push.OCI_MANIFEST)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == registry_push.OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == registry_push.sha256(r.content)
    manifest = r.json()
    assert manifest["subject"]["digest"] == digest
    assert manifest["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"
    blobs = {}
    for desc in [manifest["config"], *manifest["layers"]]:
        b = front.get(f"{repo}/blobs/{desc['digest']}", token)
        assert b.status_code == 200, (desc, b.status_code, b.headers.get("Location"))
        assert registry_push.sha256(b.content) == desc["digest"] and len(b.content) == desc["size"]
        assert b.headers["Content-Type"] == desc["mediaType"]
        blobs[desc["digest"]] = b.content
    layer = manifest["layers"][0]
    assert layer["mediaType"] == sigstore_sign.SIMPLESIGNING
    payload = blobs[layer["digest"]]
    doc = sigstore_sign.verify(payload, layer["annotations"][sigstore_sign.SIGNATURE_ANNOTATION], public, digest,
                               f"{front.host}/{repo}@{digest}")
    assert doc["critical"]["identity"]["docker-reference"] == f"{front.host}/{repo}"
    assert doc["optional"] is None  # cosign's own form: nothing optional, so the same bytes every time
    config = json.loads(blobs[manifest["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    return manifest


def filtered_digest(front: Front, machine_type: str, repo: str = "org/app") -> str:
    r = front.get(f"{repo}/manifests/latest", front.token(machine_type, repo), method="HEAD")
    assert r.status_code == 200, r.headers
    return r.headers["Docker-Content-Digest"]
