"""`metahub index create|inspect` against a real docker-registry: build an index with features from single-platform
sources, push it, pull it through metahub as several machine types; blobs of other repositories are mounted, never
copied; bad sources fail with one clear line and push nothing.

Every request metahub's CLI sends goes through a recording proxy in front of the upstream, so the tests can tell what
was written (and how)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import registry_push
from conftest import METAHUB_BIN, creds, run, skopeo_copy_variant
from registry_push import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Registry, build_image, canonical, sha256

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"}


@dataclass
class Recording:
    """A proxy in front of the upstream that records (method, path, query) of every request. With `auth`, it is a
    token-protected registry: requests need `Bearer good-token`, which `/token` grants for those Basic credentials."""

    url: str
    server: http.server.ThreadingHTTPServer
    log: list[tuple[str, str, dict]] = field(default_factory=list)
    token_scopes: list[list[str]] = field(default_factory=list)

    def writes(self) -> list[tuple[str, str, dict]]:
        return [r for r in self.log if r[0] in WRITE_METHODS]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_recording_proxy(upstream_url: str, auth: tuple[str, str] | None = None) -> Recording:
    log: list[tuple[str, str, dict]] = []
    token_scopes: list[list[str]] = []
    basic = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

        def _answer(self, status: int, body: bytes, headers: dict | None = None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if basic and parts.path == "/token":
                if self.headers.get("Authorization") != basic:
                    return self._answer(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad login","detail":null}]}')
                token_scopes.append(parse_qs(parts.query).get("scope", []))
                return self._answer(200, b'{"token":"good-token","expires_in":300}', {"Content-Type": "application/json"})
            if basic and self.headers.get("Authorization") != "Bearer good-token":
                realm = f"http://{self.headers['Host']}/token"
                challenge = f'Bearer realm="{realm}",service="proxy",scope="repository:any:pull"'
                return self._answer(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token needed","detail":null}]}', {"WWW-Authenticate": challenge})
            log.append((self.command, parts.path, parse_qs(parts.query)))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"authorization"}}
            r = requests.request(
                self.command, upstream_url + self.path, headers=headers, data=body, allow_redirects=False, stream=True, timeout=30
            )
            data = r.raw.read(decode_content=False) if self.command != "HEAD" else b""
            self.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="recording-proxy", daemon=True).start()
    return Recording(url=f"http://127.0.0.1:{server.server_address[1]}", server=server, log=log, token_scopes=token_scopes)


@pytest.fixture(scope="module")
def proxy(upstream):
    # The Host header passes through, so the registry's Location headers point back at the proxy.
    p = start_recording_proxy(upstream.url)
    yield p
    p.stop()


def metahub_index(*args: str, check: bool = True, env: dict | None = None):
    return run([METAHUB_BIN, "index", *args], check=check, env=env)


# (tag in org/bench, variant label, arch); the x86_64_v3 build lives in another repository, to be mounted.
BENCH = [("generic", "bench-generic", "amd64"), ("cpu-broadwell", "bench-broadwell", "amd64"), ("cpu-skylake", "bench-skylake", "amd64"), ("arm64", "bench-arm64", "arm64")]
OTHER_REPO = "org/bench-v3"


@dataclass
class Sources:
    images: dict[str, registry_push.Image]
    reg: Registry


@pytest.fixture(scope="module")
def sources(upstream) -> Sources:
    reg = Registry(upstream.url)
    images = {}
    for tag, variant, arch in BENCH:
        images[tag] = build_image(variant, arch)
        reg.push_image("org/bench", images[tag], tag)
    images["cpu-x86_64_v3"] = build_image("bench-x86_64_v3")
    reg.push_image(OTHER_REPO, images["cpu-x86_64_v3"], "cpu-x86_64_v3")
    for tag, variant, arch in BENCH[:2]:
        reg.push_image("org/bench-docker", build_image(variant, arch, docker=True), tag)
    return Sources(images=images, reg=reg)


CREATE_FROM = [
    "--from", "org/bench:cpu-broadwell=cpu:broadwell",
    "--from", "org/bench:cpu-skylake=cpu:skylake",
    "--from", f"{OTHER_REPO}:cpu-x86_64_v3=cpu:x86_64_v3",
    "--from", "org/bench:generic",
    "--from", "org/bench:arm64",
]


@pytest.fixture(scope="module")
def published(sources, proxy):
    proxy.log.clear()
    p = metahub_index("create", "org/bench:latest", *CREATE_FROM, "--upstream", proxy.url, "--creds", "ci:hunter2-secret")
    log = list(proxy.log)
    return p, log


def test_create_pushes_index_with_features(published, sources):
    p, _ = published
    out = p.stdout.decode().strip()
    r = sources.reg.get_manifest("org/bench", "latest")
    assert r.status_code == 200, r.text
    assert out == f"org/bench@{r.headers['Docker-Content-Digest']}"
    assert r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    got = [(m["digest"], m["platform"]) for m in index["manifests"]]
    img = sources.images
    # each cpu's x86-64 level is written as the variant too (broadwell, skylake: x86_64_v3), as buildx spells it
    v3 = {"architecture": "amd64", "os": "linux", "variant": "v3"}
    expected = [
        (img["generic"].digest, {"architecture": "amd64", "os": "linux"}),
        (img["arm64"].digest, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
        (img["cpu-broadwell"].digest, {**v3, "features": ["cpu:broadwell"]}),
        (img["cpu-skylake"].digest, {**v3, "features": ["cpu:skylake"]}),
        (img["cpu-x86_64_v3"].digest, {**v3, "features": ["cpu:x86_64_v3"]}),
    ]
    assert got == expected
    for m in index["manifests"]:
        assert m["mediaType"] == OCI_MANIFEST and m["size"] > 0
    # every child is servable from the target repository itself
    for digest, _ in got:
        assert sources.reg.get_manifest("org/bench", digest).status_code == 200
    assert "hunter2" not in p.stdout.decode() + p.stderr.decode()


def test_other_repository_blobs_are_mounted_not_copied(published, sources):
    p, log = published
    v3 = sources.images["cpu-x86_64_v3"]
    wanted = {sha256(v3.config), sha256(v3.layer)}
    mounts = [q for (m, path, q) in log if m == "POST" and path == "/v2/org/bench/blobs/uploads/"]
    assert {q["mount"][0] for q in mounts} == wanted, log
    assert all(q["from"] == [OTHER_REPO] for q in mounts)
    # no upload data went anywhere, and no layer was downloaded to be re-uploaded
    assert not [r for r in log if r[0] in {"PATCH"} or (r[0] == "PUT" and "/blobs/" in r[1])], log
    assert not [r for r in log if r[0] == "GET" and r[1].endswith(sha256(v3.layer))], log
    # blobs already in org/bench were only checked; the mounted child manifest was PUT by digest, then the index
    puts = [path for (m, path, _) in log if m == "PUT"]
    assert puts == [f"/v2/org/bench/manifests/{v3.digest}", "/v2/org/bench/manifests/latest"], puts
    err = p.stderr.decode()
    assert "2 blobs mounted" in err and f"from {OTHER_REPO}" in err, err


# What each machine type of conftest.MACHINE_TYPES gets from org/bench:latest on linux/amd64.
EXPECTED = {
    "skylake": "bench-skylake",
    "cascadelake-a100": "bench-skylake",  # cascadelake descends from skylake
    "zen2": "bench-x86_64_v3",  # zen2 is no broadwell/skylake descendant, but is an x86_64_v3
    "broadwell-m60": "bench-broadwell",
    "exact-skylake": "bench-skylake",
    "graviton": "bench-generic",  # arm64 machine: the amd64 group keeps its generic entry
}


@pytest.mark.parametrize("machine_type", sorted(EXPECTED))
def test_pull_through_metahub(published, metahub_file, machine_type, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{metahub_file.host}/org/bench:latest", tmp_path / "img", creds(machine_type))
    assert label == text == EXPECTED[machine_type]


def test_pull_arm64_through_metahub(published, metahub_file, tmp_path):
    label, text, _ = skopeo_copy_variant(f"{metahub_file.host}/org/bench:latest", tmp_path / "img", creds("graviton"), arch="arm64")
    assert label == text == "bench-arm64"


def test_inspect_table_and_json(published, proxy, sources):
    table = metahub_index("inspect", "org/bench:latest", "--upstream", proxy.url).stdout.decode()
    lines = table.splitlines()
    assert "org/bench:latest" in lines[0] and "5 entries" in lines[0], table
    assert lines[1].split()[:4] == ["#", "DIGEST", "PLATFORM", "FEATURES"], table
    rows = [line.split() for line in lines[2:]]
    assert [(r[2], r[3]) for r in rows] == [
        ("linux/amd64", "(generic)"),
        ("linux/arm64/v8", "(generic)"),
        ("linux/amd64/v3", "cpu:broadwell"),
        ("linux/amd64/v3", "cpu:skylake"),
        ("linux/amd64/v3", "cpu:x86_64_v3"),
    ], table
    assert rows[2][1] == sources.images["cpu-broadwell"].digest[:19]

    doc = json.loads(metahub_index("inspect", "org/bench:latest", "--json", "--upstream", proxy.url).stdout)
    assert doc["mediaType"] == OCI_INDEX and doc["index"] is True
    assert [m["features"] for m in doc["manifests"]] == [[], [], ["cpu:broadwell"], ["cpu:skylake"], ["cpu:x86_64_v3"]]
    assert doc["manifests"][1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}

    single = json.loads(metahub_index("inspect", "org/bench:cpu-skylake", "--json", "--upstream", proxy.url).stdout)
    assert single["index"] is False and single["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}


def test_inspect_shows_attestations(images, upstream):
    doc = json.loads(metahub_index("inspect", "org/app:latest", "--json", "--upstream", upstream.url).stdout)
    att = [m for m in doc["manifests"] if m["attestationOf"]]
    assert [m["attestationOf"] for m in att] == [images.images["cpu-skylake"].digest]
    table = metahub_index("inspect", "org/app:latest", "--upstream", upstream.url).stdout.decode()
    assert "attestation of sha256:" in table and "cpu:cascadelake,nvcap:8.0" in table, table


def test_dry_run_prints_and_pushes_nothing(sources, proxy):
    proxy.log.clear()
    p = metahub_index("create", "org/bench:dry", *CREATE_FROM, "--dry-run", "--upstream", proxy.url)
    index = json.loads(p.stdout)
    assert index["mediaType"] == OCI_INDEX and len(index["manifests"]) == 5
    assert index["manifests"][0]["digest"] == sources.images["generic"].digest
    assert proxy.writes() == [], proxy.log
    assert sources.reg.get_manifest("org/bench", "dry").status_code == 404
    assert "nothing pushed" in p.stderr.decode()


def test_docker_format(sources, proxy):
    p = metahub_index(
        "create", "org/bench-docker:latest", "--format", "docker",
        "--from", "org/bench-docker:cpu-broadwell=cpu:broadwell", "--from", "org/bench-docker:generic",
        "--upstream", proxy.url,
    )
    r = sources.reg.get_manifest("org/bench-docker", "latest")
    assert r.headers["Content-Type"] == DOCKER_LIST, r.headers
    index = r.json()
    assert index["mediaType"] == DOCKER_LIST
    assert [m["mediaType"] for m in index["manifests"]] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    assert [m["platform"].get("features") for m in index["manifests"]] == [None, ["cpu:broadwell"]]
    assert p.stdout.decode().strip() == f"org/bench-docker@{r.headers['Docker-Content-Digest']}"


def test_index_source_is_expanded_and_mounted(images, sources, proxy):
    """org/app is an index (7 platform entries with features, one attestation): its entries keep their platforms and
    features, the attestation is skipped, and its blobs are mounted into the other repository."""
    proxy.log.clear()
    metahub_index("create", "org/bench-merged:latest", "--from", "org/app:latest", "--upstream", proxy.url)
    index = sources.reg.get_manifest("org/bench-merged", "latest").json()
    features = [(m["platform"]["architecture"], m["platform"].get("features", [])) for m in index["manifests"]]
    generic_first = [(a, f) for _, a, f in registry_push.APP_ENTRIES if not f] + [(a, f) for _, a, f in registry_push.APP_ENTRIES if f]
    assert features == generic_first
    assert images.attestation.digest not in {m["digest"] for m in index["manifests"]}
    assert not [r for r in proxy.log if r[0] == "PATCH" or (r[0] == "PUT" and "/blobs/" in r[1])]
    assert any(q.get("from") == ["org/app"] for (m, _, q) in proxy.log if m == "POST")


# (args, words the one-line error must hold); each also names a good source, to prove nothing is pushed at all.
BAD = {
    "missing-tag": (["--from", "org/bench:no-such-tag=cpu:skylake"], ["org/bench:no-such-tag", "unknown"]),
    "artifact": (["--from", "org/bench-artifact:chart"], ["org/bench-artifact:chart", "artifact"]),
    "attestation": (None, ["attestation"]),
    "unknown-cpu": (["--from", "org/bench:cpu-skylake=cpu:skylak"], ["cpu:skylak", "did you mean", "skylake"]),
    "bad-nvcap": (["--from", "org/bench:cpu-skylake=nvcap:7"], ["nvcap", "<major>.<minor>"]),
    "duplicate-feature": (["--from", "org/bench:cpu-skylake=cpu:skylake,cpu:skylake"], ["listed twice"]),
    "two-generic": (["--from", "org/bench:cpu-skylake"], ["org/bench:generic", "org/bench:cpu-skylake", "generic"]),
    "same-features": (["--from", "org/bench:cpu-skylake=cpu:broadwell"], ["both carry features [cpu:broadwell]"]),
    "docker-format-oci-children": (["--from", "org/bench:cpu-skylake=cpu:skylake", "--format", "docker"], ["org/bench:generic", "not a Docker schema2 manifest", "--format oci"]),
    "expanded-duplicates": (["--from", "org/applist:latest=fabric:efa"], ["org/applist:latest", "fabric:efa"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_fail_and_push_nothing(case, sources, images, proxy):
    args, words = BAD[case]
    if case == "artifact":
        # an OCI manifest whose config is not an image config (a Helm chart, say)
        cfg = b'{"name":"chart"}'
        manifest = canonical({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256(cfg), "size": len(cfg)},
            "layers": [],
        })
        sources.reg.push_blob("org/bench-artifact", cfg)
        sources.reg.push_manifest("org/bench-artifact", "chart", manifest, OCI_MANIFEST)
    if case == "attestation":
        args = ["--from", f"org/app@{images.attestation.digest}=cpu:skylake"]
    proxy.log.clear()
    target = f"org/bench-bad-{case}"
    p = metahub_index(
        "create", f"{target}:latest", "--from", "org/bench:generic", "--from", "org/bench:cpu-broadwell=cpu:broadwell",
        *args, "--upstream", proxy.url, check=False,
    )
    err = p.stderr.decode().strip()
    assert p.returncode != 0, (p.stdout, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metahub: "), err
    for w in words:
        assert w in err, (w, err)
    assert proxy.writes() == [], proxy.log
    assert sources.reg.get_manifest(target, "latest").status_code == 404
    assert p.stdout == b""


def test_creds_from_environment_are_never_printed(sources, proxy):
    env = {"METAHUB_UPSTREAM_USERNAME": "ci", "METAHUB_UPSTREAM_PASSWORD": "s3cret-from-env"}
    p = metahub_index("create", "org/bench:env", "--from", "org/bench:generic", "--dry-run", "--upstream", proxy.url, env=env)
    assert "s3cret" not in p.stdout.decode() + p.stderr.decode()
    p = metahub_index("create", "org/bench:env", "--from", "org/bench:no-such", "--upstream", proxy.url, "--creds", "ci:s3cret-arg", check=False)
    assert p.returncode != 0 and "s3cret" not in p.stdout.decode() + p.stderr.decode()
    p = metahub_index("inspect", "org/bench:generic", "--upstream", proxy.url, "--creds", "no-colon", check=False)
    assert p.returncode != 0 and "USER:PASSWORD" in p.stderr.decode() and "no-colon" not in p.stderr.decode()


@pytest.fixture(scope="module")
def auth_proxy(upstream):
    p = start_recording_proxy(upstream.url, auth=("ci", "ci-pass-secret"))
    yield p
    p.stop()


def test_token_flow_asks_push_for_target_and_pull_for_sources(sources, auth_proxy):
    p = metahub_index(
        "create", "org/bench-auth:latest", "--from", "org/bench:generic", "--from", f"{OTHER_REPO}:cpu-x86_64_v3=cpu:x86_64_v3",
        "--upstream", auth_proxy.url, "--creds", "ci:ci-pass-secret",
    )
    assert p.stdout.decode().startswith("org/bench-auth@sha256:")
    assert sources.reg.get_manifest("org/bench-auth", "latest").status_code == 200
    assert ["repository:org/bench-auth:pull,push", "repository:org/bench:pull", f"repository:{OTHER_REPO}:pull"] in auth_proxy.token_scopes
    assert any(q.get("from") == ["org/bench"] for (m, _, q) in auth_proxy.log if m == "POST")
    assert "ci-pass-secret" not in p.stdout.decode() + p.stderr.decode()

    # inspect reads with a pull-only token
    env = {"METAHUB_UPSTREAM_USERNAME": "ci", "METAHUB_UPSTREAM_PASSWORD": "ci-pass-secret"}
    doc = json.loads(metahub_index("inspect", "org/bench-auth:latest", "--json", "--upstream", auth_proxy.url, env=env).stdout)
    assert len(doc["manifests"]) == 2
    assert ["repository:org/bench-auth:pull"] in auth_proxy.token_scopes


def test_refused_credentials_fail_in_one_line(sources, auth_proxy):
    auth_proxy.log.clear()
    p = metahub_index(
        "create", "org/bench-auth:refused", "--from", "org/bench:generic", "--upstream", auth_proxy.url, "--creds", "ci:wrong-secret", check=False,
    )
    err = p.stderr.decode().strip()
    assert p.returncode != 0 and len(err.splitlines()) == 1 and err.startswith("metahub: "), err
    assert "org/bench:generic" in err and "refused" in err and "wrong-secret" not in err, err
    assert auth_proxy.log == []
