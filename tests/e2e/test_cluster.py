"""What clusters need beyond a pull by tag, with real clients: several upstreams, mirror mode (containerd `hosts.toml`
with `?ns=`, a podman `registries.conf` mirror, Docker Engine `registry-mirrors`), tag lists, referrers, and the
refusals (a foreign `ns`, a token for another repository).

MetaHub runs with three routes: the default and `docker.io` on the session's upstream, `ghcr.io` on a second
registry that alone has `team/tool`, the paged repository and the referrers.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path

import pytest
import requests

import conftest
import registry_push
from conftest import (
    Containerd,
    assert_registry_error,
    creds,
    get_token,
    run,
    skopeo,
    start_configured_metahub,
    start_registry,
    v2,
)

PAGED_TAGS = ["a1", "b2", "c3", "d4", "e5"]
SIGNATURE = "application/vnd.example.signature.v1+json"
SBOM = "application/spdx+json"


@pytest.fixture(scope="module")
def second(workdir):
    """The registry behind the `ghcr.io` prefix: the usual content, plus what only it has."""
    up = start_registry(workdir, "upstream-ghcr")
    pushed = registry_push.push_test_content(up.url)
    reg = registry_push.Registry(up.url)
    reg.push_image("team/tool", pushed.images["single"], "v1")
    for tag in PAGED_TAGS:
        reg.push_image("org/paged", pushed.images["single"], tag)
    index_bytes, _, index_digest = pushed.tags["org/app"]
    referrers = [
        registry_push.push_referrer(up.url, "org/app", index_digest, len(index_bytes), SIGNATURE, b"signature"),
        registry_push.push_referrer(up.url, "org/app", index_digest, len(index_bytes), SBOM, b'{"spdx": 1}'),
    ]
    yield up, pushed, referrers
    up.stop()


@pytest.fixture(scope="module")
def hub(workdir, upstream, images, second):
    h = start_configured_metahub(
        workdir,
        upstream,
        "metahub-cluster",
        ["--upstream", f"docker.io={upstream.url}", "--upstream", f"ghcr.io={second[0].url}"],
    )
    yield h
    h.stop()


def token_for(hub, repo: str, machine_type: str = "skylake") -> str:
    return get_token(hub, machine_type, repo=repo)


# ---------------------------------------------------------------------------------------------
# mirror mode: nodes keep their image names


def write_hosts_dir(base: Path, hub, registries: list[str]) -> Path:
    """containerd's `config_path` layout: `<dir>/<registry>/hosts.toml`, MetaHub as the mirror of each registry.
    `server` is a closed local port: should the mirror fail, nothing leaves the machine."""
    for registry in registries:
        d = base / registry
        d.mkdir(parents=True)
        (d / "hosts.toml").write_text(
            'server = "http://127.0.0.1:1"\n'
            f'[host."{hub.url}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
    return base


def ctr_pull_mirrored(containerd: Containerd, hosts_dir: Path, ref: str, namespace: str, machine_type: str = "skylake"):
    user = ":".join(creds(machine_type))
    args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--user", user, "--snapshotter", "native", ref]
    return containerd.ctr(*args, namespace=namespace)


def test_ctr_mirror_routes_by_ns_to_two_upstreams(containerd, hub, second, images, tmp_path):
    """`docker.io/org/app` and `ghcr.io/...` keep their names; containerd sends `?ns=<registry>` to the mirror."""
    _, pushed2, _ = second
    hosts = write_hosts_dir(tmp_path / "certs.d", hub, ["docker.io", "ghcr.io"])
    ns = containerd.namespace()

    ctr_pull_mirrored(containerd, hosts, "docker.io/org/app:latest", ns)
    label, text, top = containerd.pulled_variant("docker.io/org/app:latest", ns)
    assert (label, text) == ("cpu-skylake", "cpu-skylake")
    assert len([m for m in top["manifests"] if m["platform"]["architecture"] == "amd64"]) == 1, "a filtered index"

    ctr_pull_mirrored(containerd, hosts, "ghcr.io/org/app:latest", ns, "zen2")
    label, _, _ = containerd.pulled_variant("ghcr.io/org/app:latest", ns)
    assert label != "cpu-skylake", "zen2 does not run skylake builds"

    # only the second upstream has team/tool: ns=ghcr.io reached it
    ctr_pull_mirrored(containerd, hosts, "ghcr.io/team/tool:v1", ns)
    assert containerd.image_target("ghcr.io/team/tool:v1", ns) == pushed2.images["single"].digest


def test_foreign_ns_is_refused_never_fetched(containerd, hub, tmp_path):
    for path in ["/v2/org/app/manifests/latest?ns=quay.io", "/v2/org/app/blobs/sha256:" + "0" * 64 + "?ns=169.254.169.254",
                 "/v2/org/app/tags/list?ns=evil.example"]:
        status, _, body = conftest.raw_request(hub.url, "GET", path, {"Authorization": f"Bearer {token_for(hub, 'org/app')}"})
        err = assert_registry_error(status, body, 403, {"DENIED"})
        assert "mirrors no registry" in err["message"], err
    # the same through a node's configuration: quay.io is not configured, so the pull fails at the mirror
    hosts = write_hosts_dir(tmp_path / "certs.d", hub, ["quay.io"])
    p = containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--user", ":".join(creds("skylake")),
                       "--snapshotter", "native", "quay.io/org/app:latest", namespace=containerd.namespace(), check=False)
    assert p.returncode != 0


def test_token_for_another_repository_is_refused(hub):
    token = token_for(hub, "org/app")
    r = v2(hub, "org/other/tags/list", token)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert 'scope="repository:org/other:pull"' in r.headers["WWW-Authenticate"]
    # with ?ns= the repository is the routed one: a token for org/app is not one for ghcr.io/org/app
    r = v2(hub, "org/app/manifests/latest?ns=ghcr.io", token)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    assert 'scope="repository:ghcr.io/org/app:pull"' in r.headers["WWW-Authenticate"]


def test_podman_registries_conf_mirror(podman, hub, second):
    _, pushed2, _ = second
    conf = podman.base / ".config" / "containers" / "registries.conf"
    conf.parent.mkdir(parents=True)
    blocks = []
    for registry in ["docker.io", "ghcr.io"]:
        blocks.append(
            f'[[registry]]\nprefix = "{registry}"\nlocation = "127.0.0.1:1"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{hub.host}/{registry}"\ninsecure = true\n'
        )
    conf.write_text('unqualified-search-registries = []\n' + "\n".join(blocks))
    # --creds would go to the primary location only: a mirror's login is the auth file's entry for its host
    user, password = creds("skylake")
    podman("login", "--tls-verify=false", "-u", user, "-p", password, hub.host)
    assert podman.pull_variant("docker.io/org/app:latest") == "cpu-skylake"
    assert podman.pull_variant("ghcr.io/team/tool:v1") == "single"
    inspect_out = json.loads(podman("image", "inspect", "ghcr.io/team/tool:v1").stdout)
    assert inspect_out[0]["Digest"] == pushed2.images["single"].digest


def test_docker_engine_registry_mirrors(workdir, upstream, images):
    """Docker Engine sends Docker Hub names to its `registry-mirrors` without `ns` and with Docker Hub's credentials,
    so the mirror serves them anonymously, as a configured machine type."""
    mirror = start_configured_metahub(workdir, upstream, "metahub-docker-mirror", ["--anonymous-machine-type", "skylake"])
    try:
        # a daemon of this test's own: registry-mirrors is daemon-wide, the session's `docker` must not have it
        engine = conftest.start_dockerd(workdir, extra_args=["--registry-mirror", mirror.url])
        try:
            pulled = engine.client().pull("org/app:latest")
            assert (pulled.label, pulled.text) == ("cpu-skylake", "cpu-skylake")
        finally:
            engine.stop()
    finally:
        mirror.stop()


# ---------------------------------------------------------------------------------------------
# tag lists


def test_skopeo_list_tags_through_prefix_and_default(hub, second):
    out = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", ":".join(creds("skylake")),
                            f"docker://{hub.host}/ghcr.io/org/paged").stdout)
    assert out["Tags"] == PAGED_TAGS, "in lexical order, whatever order the upstream lists them in"
    out = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", ":".join(creds("zen2")),
                            f"docker://{hub.host}/org/app").stdout)
    # other tests push more tags to org/app: the default upstream's list, whole and in lexical order
    assert "latest" in out["Tags"] and out["Tags"] == sorted(out["Tags"]), out


@pytest.mark.parametrize("path, ns", [("ghcr.io/org/paged", None), ("org/paged", "ghcr.io")])
def test_tags_pagination_with_link(hub, second, path, ns):
    """docker-registry 2.8 ignores n and last: MetaHub pages its full list itself, in lexical order."""
    token = token_for(hub, f"ghcr.io/org/paged")
    query = f"n=2&ns={ns}" if ns else "n=2"
    url = f"/v2/{path}/tags/list?{query}"
    seen = []
    while url:
        r = requests.get(hub.url + url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == path and len(body["tags"]) <= 2
        seen += body["tags"]
        link = r.headers.get("Link")
        url = link.split(">", 1)[0].lstrip("<") if link else None
        if url:
            assert 'rel="next"' in link and url.startswith(f"/v2/{path}/tags/list?")
            assert (f"ns={ns}" in url) == bool(ns), url
    assert seen == PAGED_TAGS


def test_tags_bad_n_and_unknown_repository(hub, second):
    token = token_for(hub, "ghcr.io/org/paged")
    r = v2(hub, "ghcr.io/org/paged/tags/list?n=two", token)
    assert_registry_error(r.status_code, r.content, 400, {"PAGINATION_NUMBER_INVALID"})
    token = token_for(hub, "ghcr.io/org/nothing")
    r = v2(hub, "ghcr.io/org/nothing/tags/list", token)
    assert_registry_error(r.status_code, r.content, 404, {"NAME_UNKNOWN"})


# ---------------------------------------------------------------------------------------------
# referrers


def referrers(hub, repo: str, digest: str, artifact_type: str | None = None) -> requests.Response:
    query = f"?artifactType={urllib.parse.quote(artifact_type, safe='')}" if artifact_type else ""
    return v2(hub, f"{repo}/referrers/{digest}{query}", token_for(hub, repo))


def test_referrers_from_the_upstreams_tag_scheme(hub, second):
    _, pushed2, pushed_referrers = second
    index_digest = pushed2.tags["org/app"][2]
    r = referrers(hub, "ghcr.io/org/app", index_digest)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == registry_push.OCI_INDEX
    assert "OCI-Filters-Applied" not in r.headers
    doc = r.json()
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == registry_push.OCI_INDEX
    assert doc["manifests"] == pushed_referrers

    r = referrers(hub, "ghcr.io/org/app", index_digest, SIGNATURE)
    assert r.status_code == 200 and r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["artifactType"] for m in r.json()["manifests"]] == [SIGNATURE]
    r = referrers(hub, "ghcr.io/org/app", index_digest, "application/x-none")
    assert r.status_code == 200 and r.json()["manifests"] == []


def test_referrers_of_a_filtered_digest_are_those_of_its_upstream_index(hub, second):
    _, pushed2, pushed_referrers = second
    token = token_for(hub, "ghcr.io/org/app")
    head = v2(hub, "ghcr.io/org/app/manifests/latest", token, method="HEAD")
    filtered = head.headers["Docker-Content-Digest"]
    assert filtered != pushed2.tags["org/app"][2], "skylake is served a filtered index"
    r = referrers(hub, "ghcr.io/org/app", filtered)
    assert r.status_code == 200, r.text
    assert r.json()["manifests"] == pushed_referrers


def test_referrers_tag_passes_unfiltered(hub, second):
    up, pushed2, _ = second
    tag = pushed2.tags["org/app"][2].replace(":", "-", 1)
    upstream_bytes = registry_push.Registry(up.url).get_manifest("org/app", tag).content
    r = v2(hub, f"ghcr.io/org/app/manifests/{tag}", token_for(hub, "ghcr.io/org/app"))
    assert r.status_code == 200, r.text
    assert r.content == upstream_bytes
    assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(upstream_bytes).hexdigest()


def test_no_referrers_is_an_empty_index_never_404(hub, second, images):
    """distribution-spec 1.1: a registry with the referrers API answers 200 and an empty index when nothing refers
    to a digest, whether or not the digest exists, and whatever the upstream has (distribution 2.8 has no API; no
    `<alg>-<hex>` tag exists for these)."""
    _, pushed2, _ = second
    for repo, digest in [
        ("ghcr.io/org/app", pushed2.images["generic-amd64"].digest),  # a child nothing refers to
        ("org/app", images.tags["org/app"][2]),  # an index nothing refers to
        ("ghcr.io/org/app", "sha256:" + "0" * 64),  # no such manifest
        ("ghcr.io/org/nothing", "sha256:" + "0" * 64),  # no such repository
    ]:
        r = referrers(hub, repo, digest)
        assert r.status_code == 200, (repo, digest, r.status_code, r.text)
        assert r.headers["Content-Type"] == registry_push.OCI_INDEX
        assert r.json() == {"schemaVersion": 2, "mediaType": registry_push.OCI_INDEX, "manifests": []}
        assert "OCI-Filters-Applied" not in r.headers
        r = referrers(hub, repo, digest, SIGNATURE)
        assert r.status_code == 200 and r.json()["manifests"] == [], r.text
        assert r.headers["OCI-Filters-Applied"] == "artifactType"
    for malformed in ["sha256:abc", "sha256:" + "G" * 64, "md5:" + "0" * 32, "latest"]:
        r = referrers(hub, "ghcr.io/org/app", malformed)
        assert_registry_error(r.status_code, r.content, 400, {"DIGEST_INVALID"})


def test_impossible_manifest_reference_is_404_after_authentication(hub):
    r = requests.get(f"{hub.url}/v2/org/app/manifests/-bad", timeout=10)
    assert_registry_error(r.status_code, r.content, 401, {"UNAUTHORIZED"})
    r = v2(hub, "org/app/manifests/-bad", token_for(hub, "org/app"))
    assert_registry_error(r.status_code, r.content, 404, {"MANIFEST_UNKNOWN"})
    r = v2(hub, "org/app/manifests/nope", token_for(hub, "org/app"), method="HEAD")
    assert r.status_code == 404


# ---------------------------------------------------------------------------------------------
# credentials per upstream: from a file, never the command line


def test_upstream_credentials_from_a_file(workdir, upstream, images, tmp_path):
    login = ("puller", "upstream-secret-1")
    private = start_registry(workdir, "upstream-private", login=login)
    hubs = []
    try:
        reg = registry_push.Registry(private.url, login)
        single = registry_push.build_image("single")
        digest = reg.push_image("org/secret", single, "v1")
        auths = tmp_path / "upstreams.json"
        auths.write_text(json.dumps({"auths": {"private.io": {"username": login[0], "password": login[1]}}}))
        auths.chmod(0o600)
        with_file = start_configured_metahub(workdir, upstream, "metahub-creds",
                                             ["--upstream", f"private.io={private.url}", "--upstream-credentials", str(auths)])
        hubs.append(with_file)
        raw = conftest.skopeo_raw(f"{with_file.host}/private.io/org/secret:v1", creds("skylake"))
        assert hashlib.sha256(raw).hexdigest() == digest.split(":", 1)[1]
        assert login[1] not in with_file.log()

        without = start_configured_metahub(workdir, upstream, "metahub-nocreds", ["--upstream", f"private.io={private.url}"])
        hubs.append(without)
        r = v2(without, "private.io/org/secret/manifests/v1", token_for(without, "private.io/org/secret"))
        assert_registry_error(r.status_code, r.content, 403, {"DENIED"})

        # a key for no configured upstream stops the server with one line naming it
        typo = tmp_path / "typo.json"
        typo.write_text(json.dumps({"auths": {"privat.io": {"username": "a", "password": "b"}}}))
        typo.chmod(0o600)
        p = run([conftest.METAHUB_BIN, "serve", "--listen", "127.0.0.1:1", "--upstream", f"private.io={private.url}",
                 "--upstream-credentials", str(typo), "--store", f"file:{tmp_path / 's.redb'}"], check=False)
        assert p.returncode != 0 and b"privat.io" in p.stderr, p.stderr
    finally:
        for h in hubs:
            h.stop()
        private.stop()
