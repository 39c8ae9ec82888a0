"""Build tiny test images and push them through the distribution HTTP API.

Every image is one gzip tar layer holding `/variant.txt` (its variant name) and a config whose
`config.Labels.variant` is the same name, so any client can tell which entry it got: skopeo/ctr by
reading the config blob, podman through `image inspect`. Everything is deterministic (fixed mtimes,
gzip mtime 0), so two upstreams fed the same content hold the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

ALL_MANIFEST_TYPES = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

TIMEOUT = 30


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def make_layer(text: str) -> tuple[bytes, str]:
    """Return (gzip tar bytes, diff_id) for a layer holding /variant.txt."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = (text + "\n").encode()
        info = tarfile.TarInfo("variant.txt")
        info.size = len(payload)
        info.mtime = 1_600_000_000
        info.mode = 0o644
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(tar_bytes)
    return gz.getvalue(), sha256(tar_bytes)


def read_variant_from_layer(layer: bytes) -> str:
    """The text of /variant.txt in a (possibly gzip) layer tar."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        for member in tar.getmembers():
            if member.name.lstrip("./") == "variant.txt":
                f = tar.extractfile(member)
                assert f is not None
                return f.read().decode().strip()
    raise KeyError("variant.txt not in layer")


@dataclass
class Image:
    """One pushed single-platform image."""

    variant: str
    arch: str
    os: str
    media_type: str
    manifest: bytes
    config: bytes
    layer: bytes
    digest: str = ""

    @property
    def size(self) -> int:
        return len(self.manifest)


def build_image(variant: str, arch: str = "amd64", os_: str = "linux", docker: bool = False, env: list[str] | None = None) -> Image:
    """`env`: the config's `Env` (`KEY=VALUE`), e.g. an `NVIDIA_REQUIRE_CUDA`."""
    layer, diff_id = make_layer(variant)
    config = {
        "architecture": arch,
        "os": os_,
        "config": {"Labels": {"variant": variant}, "Cmd": ["/bin/true"], **({"Env": env} if env else {})},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"metahub test image {variant}"}],
    }
    if arch == "arm64":
        config["variant"] = "v8"
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": DOCKER_LAYER if docker else OCI_LAYER,
                "digest": sha256(layer),
                "size": len(layer),
            }
        ],
    }
    if not docker:
        manifest["annotations"] = {"org.opencontainers.image.title": variant}
    mbytes = canonical(manifest)
    return Image(
        variant=variant,
        arch=arch,
        os=os_,
        media_type=manifest["mediaType"],
        manifest=mbytes,
        config=config_bytes,
        layer=layer,
        digest=sha256(mbytes),
    )


def build_attestation(subject: Image) -> Image:
    """A buildx-like attestation manifest (in-toto layer) for `subject`."""
    statement = canonical(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://spdx.dev/Document",
            "subject": [{"name": "test", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
            "predicate": {"spdxVersion": "SPDX-2.3"},
        }
    )
    config_bytes = canonical({"architecture": "unknown", "os": "unknown", "config": {}, "rootfs": {"type": "layers", "diff_ids": [sha256(statement)]}})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [
            {
                "mediaType": "application/vnd.in-toto+json",
                "digest": sha256(statement),
                "size": len(statement),
                "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
            }
        ],
    }
    mbytes = canonical(manifest)
    return Image("attestation", "unknown", "unknown", OCI_MANIFEST, mbytes, config_bytes, statement, sha256(mbytes))


class Registry:
    """Minimal distribution API client for pushing (no auth: the test upstreams are open)."""

    def __init__(self, base: str, login: tuple[str, str] | None = None):
        self.base = base.rstrip("/")
        self.s = requests.Session()
        self.s.auth = login

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        r = self.s.head(f"{self.base}/v2/{repo}/blobs/{digest}", timeout=TIMEOUT)
        if r.status_code == 200:
            return digest
        r = self.s.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
        r.raise_for_status()
        loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = self.base + loc
        sep = "&" if "?" in loc else "?"
        r = self.s.put(
            f"{loc}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=TIMEOUT,
        )
        if r.status_code != 201:
            raise RuntimeError(f"blob upload {repo} {digest}: {r.status_code} {r.text}")
        return digest

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        r = self.s.put(
            f"{self.base}/v2/{repo}/manifests/{ref}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=TIMEOUT,
        )
        if r.status_code != 201:
            raise RuntimeError(f"manifest put {repo}:{ref}: {r.status_code} {r.text}")
        digest = r.headers.get("Docker-Content-Digest", sha256(body))
        assert digest == sha256(body), (digest, sha256(body))
        return digest

    def push_image(self, repo: str, img: Image, ref: str | None = None) -> str:
        self.push_blob(repo, img.layer)
        self.push_blob(repo, img.config)
        return self.push_manifest(repo, ref or img.digest, img.manifest, img.media_type)

    def get_manifest(self, repo: str, ref: str, accept: str = ALL_MANIFEST_TYPES) -> requests.Response:
        return self.s.get(f"{self.base}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}, timeout=TIMEOUT)


def push_referrer(base: str, repo: str, subject_digest: str, subject_size: int, artifact_type: str, payload: bytes,
                  subject_media_type: str = OCI_INDEX) -> dict:
    """An artifact (a signature, an SBOM) that refers to `subject_digest`: an OCI manifest with `subject` and
    `artifactType`, pushed by digest, and listed in the subject's referrers tag `<alg>-<hex>` as the fallback tag scheme
    does it (distribution 2.8 has no referrers API). Returns the artifact's descriptor as the tag lists it."""
    reg = Registry(base)
    empty = b"{}"
    reg.push_blob(repo, empty)
    reg.push_blob(repo, payload)
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": len(empty)},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(payload), "size": len(payload)}],
        "subject": {"mediaType": subject_media_type, "digest": subject_digest, "size": subject_size},
        "annotations": {"org.example.kind": artifact_type},
    })
    digest = reg.push_manifest(repo, sha256(manifest), manifest, OCI_MANIFEST)
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "artifactType": artifact_type,
             "annotations": {"org.example.kind": artifact_type}}
    tag = subject_digest.replace(":", "-", 1)
    existing = reg.get_manifest(repo, tag, OCI_INDEX)
    entries = existing.json()["manifests"] if existing.status_code == 200 else []
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries + [entry]})
    reg.push_manifest(repo, tag, index, OCI_INDEX)
    return entry


def descriptor(img: Image, platform: dict | None, annotations: dict | None = None) -> dict:
    d = {"mediaType": img.media_type, "digest": img.digest, "size": img.size}
    if platform is not None:
        d["platform"] = platform
    if annotations:
        d["annotations"] = annotations
    return d


def platform(arch: str, features: list[str] | None = None) -> dict:
    p = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        p["variant"] = "v8"
    if features:
        p["features"] = list(features)
    return p


# (variant, arch, features) of org/app and org/applist, in index order.
APP_ENTRIES: list[tuple[str, str, list[str]]] = [
    ("generic-amd64", "amd64", []),
    ("cpu-broadwell", "amd64", ["cpu:broadwell"]),
    ("cpu-skylake", "amd64", ["cpu:skylake"]),
    ("cpu-x86_64_v3", "amd64", ["cpu:x86_64_v3"]),
    ("nvcap-7.0", "amd64", ["cpu:skylake", "nvcap:7.0"]),
    ("nvcap-8.0", "amd64", ["cpu:cascadelake", "nvcap:8.0"]),
    ("arm64", "arm64", []),
]

FEATURED_ONLY_ENTRIES: list[tuple[str, str, list[str]]] = [
    ("cpu-skylake", "amd64", ["cpu:skylake"]),
    ("nvcap-8.0", "amd64", ["cpu:cascadelake", "nvcap:8.0"]),
]


@dataclass
class Pushed:
    """What was pushed to one upstream, for assertions."""

    base: str
    images: dict[str, Image] = field(default_factory=dict)  # OCI images by variant
    docker_images: dict[str, Image] = field(default_factory=dict)  # Docker schema2 images by variant
    attestation: Image | None = None
    # repo -> (raw manifest bytes of the tag, media type, digest)
    tags: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)

    def variant_of_digest(self, digest: str) -> str | None:
        for table in (self.images, self.docker_images):
            for v, img in table.items():
                if img.digest == digest:
                    return v
        return None

    def variant_of_config(self, config_digest: str) -> str | None:
        for table in (self.images, self.docker_images):
            for v, img in table.items():
                if sha256(img.config) == config_digest:
                    return v
        return None


def push_test_content(base: str) -> Pushed:
    reg = Registry(base)
    out = Pushed(base=base)
    variants = {v: a for v, a, _ in APP_ENTRIES}
    variants["single"] = "amd64"
    for v, arch in variants.items():
        out.images[v] = build_image(v, arch)
        out.docker_images[v] = build_image(v, arch, docker=True)

    # org/app: OCI index with features and an attestation for the skylake entry.
    entries = []
    for v, arch, feats in APP_ENTRIES:
        reg.push_image("org/app", out.images[v])
        entries.append(descriptor(out.images[v], platform(arch, feats)))
    att = build_attestation(out.images["cpu-skylake"])
    out.attestation = att
    reg.push_image("org/app", att)
    entries.append(
        descriptor(
            att,
            {"architecture": "unknown", "os": "unknown"},
            {
                "vnd.docker.reference.digest": out.images["cpu-skylake"].digest,
                "vnd.docker.reference.type": "attestation-manifest",
            },
        )
    )
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
        "annotations": {"org.opencontainers.image.description": "metahub e2e"},
    }
    body = canonical(index)
    out.tags["org/app"] = (body, OCI_INDEX, reg.push_manifest("org/app", "latest", body, OCI_INDEX))

    # org/applist: the same as a Docker manifest list of schema2 manifests.
    entries = []
    for v, arch, feats in APP_ENTRIES:
        reg.push_image("org/applist", out.docker_images[v])
        entries.append(descriptor(out.docker_images[v], platform(arch, feats)))
    body = canonical({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries})
    out.tags["org/applist"] = (body, DOCKER_LIST, reg.push_manifest("org/applist", "latest", body, DOCKER_LIST))

    # org/featuredonly: no generic entry at all.
    entries = []
    for v, arch, feats in FEATURED_ONLY_ENTRIES:
        reg.push_image("org/featuredonly", out.images[v])
        entries.append(descriptor(out.images[v], platform(arch, feats)))
    body = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    out.tags["org/featuredonly"] = (body, OCI_INDEX, reg.push_manifest("org/featuredonly", "latest", body, OCI_INDEX))

    # org/single: a plain manifest, no index.
    single = out.images["single"]
    reg.push_image("org/single", single, "latest")
    out.tags["org/single"] = (single.manifest, OCI_MANIFEST, single.digest)
    return out


if __name__ == "__main__":
    import sys

    pushed = push_test_content(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5000")
    for repo, (_, mt, d) in pushed.tags.items():
        print(repo, mt, d)
