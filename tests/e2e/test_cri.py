"""Kubernetes nodes: containerd's CRI plugin driven over CRI v1 gRPC as the kubelet drives it (PullImage with and
without an AuthConfig, ImageStatus, RemoveImage), hosts.toml mirrors that keep `docker.io`/`ghcr.io` names, the
node's `configs.auth` block, and `metahub credential-provider` exec'd as the kubelet execs it, its answer handed to
PullImage. Each pull's build is read twice: the config label from ImageStatus' verbose info, the layer's
/variant.txt from containerd's content store.

MetaHub routes `docker.io` and the default to the session's upstream, `ghcr.io` to a second registry that alone
has `team/tool`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import grpc
import pytest
import requests

import cri
import registry_push
from conftest import METAHUB_BIN, challenge, creds, get_token, start_configured_metahub, start_registry, v2

# what each machine type is served of org/app (as tests/e2e/test_pull.py's EXPECTED_AMD64)
EXPECTED = {"skylake": "cpu-skylake", "zen2": "cpu-x86_64_v3"}
PROVIDER_API = "credentialprovider.kubelet.k8s.io/v1"


@pytest.fixture(scope="module")
def stubs(workdir):
    return cri.load_stubs(workdir / "cri-stubs")


@pytest.fixture(scope="module")
def ghcr(workdir):
    up = start_registry(workdir, "upstream-ghcr-cri")
    pushed = registry_push.push_test_content(up.url)
    registry_push.Registry(up.url).push_image("team/tool", pushed.images["single"], "v1")
    yield up, pushed
    up.stop()


@pytest.fixture(scope="module")
def hub(workdir, upstream, images, ghcr):
    h = start_configured_metahub(workdir, upstream, "metahub-cri",
                                 ["--upstream", f"docker.io={upstream.url}", "--upstream", f"ghcr.io={ghcr[0].url}"])
    yield h
    h.stop()


def configure(node: cri.CriNode, hub) -> cri.CriNode:
    """The hosts.toml docs/nodes.md gives: MetaHub as the mirror and as the `server` of each mirrored registry."""
    node.plain_http(hub.host)
    for registry in ("docker.io", "ghcr.io"):
        node.mirror(registry, hub.host, server=hub.url)
    return node


@pytest.fixture(scope="module")
def node(workdir, stubs, hub):
    """A node whose credentials come from the kubelet (AuthConfig) only."""
    n = configure(cri.CriNode.start(workdir, "cri-node", stubs), hub)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def zen2_node(workdir, stubs, hub):
    """A node of the zen2 pool with its account in containerd's `configs."<metahub>".auth` block."""
    n = configure(cri.CriNode.start(workdir, "cri-node-zen2", stubs, node_auth={hub.host: creds("zen2")}), hub)
    yield n
    n.stop()


def served_digest(hub, repo: str, machine_type: str) -> str:
    """The digest MetaHub serves `repo:latest` as to a machine type (`repo` as routed: `ghcr.io/org/app`)."""
    r = v2(hub, f"{repo}/manifests/latest", get_token(hub, machine_type, repo=repo), method="HEAD")
    assert r.status_code == 200, r.text
    return r.headers["Docker-Content-Digest"]


def assert_build(node: cri.CriNode, image: str, machine_type: str, hub, routed: str) -> cri.Pulled:
    pulled = node.pulled_build(image)
    assert (pulled.label, pulled.layer_text) == (EXPECTED[machine_type], EXPECTED[machine_type]), (image, machine_type)
    assert pulled.repo_digest == served_digest(hub, routed, machine_type), "the index MetaHub filtered for this type"
    return pulled


def remove(node: cri.CriNode, image: str) -> None:
    node.remove(image)
    assert node.status(image) == (None, {})
    assert image not in node.list_tags()


# ---------------------------------------------------------------------------------------------
# the CRI ImageService, credentials from the kubelet


def test_cri_plugin_speaks_v1(node):
    v = node.version()
    assert (v.runtime_name, v.runtime_api_version) == ("containerd", "v1")


@pytest.mark.parametrize("machine_type", ["skylake", "zen2"])
def test_pull_with_auth_config_gets_the_machine_types_build(node, hub, machine_type):
    image = f"{hub.host}/org/app:latest"
    ref = node.pull(image, creds(machine_type))
    pulled = assert_build(node, image, machine_type, hub, "org/app")
    assert ref == pulled.image_id, "PullImage's image_ref is ImageStatus' id"
    assert pulled.repo_tags == [image]
    amd64 = [m for m in pulled.top["manifests"] if m["platform"]["architecture"] == "amd64"]
    assert len(amd64) == 1, "containerd received the filtered index"
    remove(node, image)
    node.remove(image)  # idempotent, as the CRI requires


def test_pull_without_credentials_or_with_a_wrong_password_is_refused(node, hub):
    image = f"{hub.host}/org/app:latest"
    for auth, how in [(None, "anonymous token"), ((creds("skylake")[0], "not-the-password"), "oauth token")]:
        with pytest.raises(grpc.RpcError) as e:
            node.pull(image, auth)
        assert f"failed to fetch {how}: unexpected status: 401 Unauthorized" in e.value.details(), e.value.details()
        assert node.status(image) == (None, {})


def test_hosts_toml_mirrors_keep_the_names(node, hub, ghcr):
    """docker.io and ghcr.io names through MetaHub (containerd sends `?ns=<registry>`), each pool its build."""
    _, pushed_ghcr = ghcr
    node.pull("docker.io/org/app:latest", creds("skylake"))
    pulled = assert_build(node, "docker.io/org/app:latest", "skylake", hub, "docker.io/org/app")
    assert pulled.repo_tags == ["docker.io/org/app:latest"]
    node.pull("ghcr.io/org/app:latest", creds("zen2"))
    assert_build(node, "ghcr.io/org/app:latest", "zen2", hub, "ghcr.io/org/app")
    # only the ghcr.io upstream has team/tool: ns=ghcr.io reached it
    node.pull("ghcr.io/team/tool:v1", creds("zen2"))
    img, _ = node.status("ghcr.io/team/tool:v1")
    assert img.repo_digests == [f"ghcr.io/team/tool@{pushed_ghcr.images['single'].digest}"]
    for image in ["docker.io/org/app:latest", "ghcr.io/org/app:latest", "ghcr.io/team/tool:v1"]:
        remove(node, image)


def test_a_name_the_routed_upstream_lacks_is_not_found_elsewhere(node, hub, upstream, images):
    """containerd sends `?ns=ghcr.io` to the `server` too when that is MetaHub: a repository only the default
    upstream has is not found under a ghcr.io name, never pulled from the wrong registry."""
    registry_push.Registry(upstream.url).push_image("only/default", images.images["single"], "v1")
    node.pull(f"{hub.host}/only/default:v1", creds("zen2"))  # there, by MetaHub's own name
    remove(node, f"{hub.host}/only/default:v1")
    with pytest.raises(grpc.RpcError) as e:
        node.pull("ghcr.io/only/default:v1", creds("zen2"))
    assert "ghcr.io/only/default:v1: not found" in e.value.details(), e.value.details()


def test_node_configs_auth_and_the_pull_secret_that_overrides_it(zen2_node, hub):
    """Without an AuthConfig containerd uses the node's `configs.auth` (looked up by the host it talks to, so
    mirrored names too). An AuthConfig, which is what a pod's imagePullSecrets for the MetaHub host becomes, wins
    over it: the pod pulls another pool's build on this zen2 node."""
    for image, routed in [(f"{hub.host}/org/app:latest", "org/app"), ("docker.io/org/app:latest", "docker.io/org/app")]:
        zen2_node.pull(image)
        assert_build(zen2_node, image, "zen2", hub, routed)
        zen2_node.pull(image, creds("skylake"))
        assert_build(zen2_node, image, "skylake", hub, routed)
        remove(zen2_node, image)


# ---------------------------------------------------------------------------------------------
# metahub credential-provider, as the kubelet runs it


def write_credentials(path, machine_type: str, mode: int = 0o600):
    path.write_text("{}:{}\n".format(*creds(machine_type)))
    path.chmod(mode)
    return path


def kubelet_with(tmp_path, hub, args: list[str] | None = None, env: dict[str, str] | None = None,
                 match_images: list[str] | None = None) -> cri.Kubelet:
    """The kubelet's `--image-credential-provider-config` (JSON; the kubelet reads YAML or JSON) and
    `--image-credential-provider-bin-dir` holding the plugin under the config's name."""
    bin_dir = tmp_path / "credential-provider-bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "metahub").exists():
        (bin_dir / "metahub").symlink_to(METAHUB_BIN)
    provider = {
        "name": "metahub",
        "matchImages": match_images or [hub.host, "docker.io", "ghcr.io"],
        "defaultCacheDuration": "4m",
        "apiVersion": PROVIDER_API,
        "args": ["credential-provider", "--registry", hub.host, "--mirror", "docker.io", "--mirror", "ghcr.io", *(args or [])],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    config = tmp_path / "credential-provider-config.json"
    config.write_text(json.dumps({"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
                                  "providers": [provider]}, indent=2))
    return cri.Kubelet(config_path=config, bin_dir=bin_dir)


def token_lifetime(hub) -> int:
    ch = challenge(hub)
    r = requests.get(ch["realm"], params={"service": ch["service"], "scope": "repository:org/app:pull"},
                     auth=creds("skylake"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["expires_in"]


def test_credential_provider_answer_pulls_the_pools_build(node, hub, tmp_path):
    secret = write_credentials(tmp_path / "node-credentials", "skylake")
    kubelet = kubelet_with(tmp_path, hub, env={"METAHUB_NODE_CREDENTIALS_FILE": str(secret)})
    for image, routed in [(f"{hub.host}/org/app:latest", "org/app"), ("docker.io/org/app:latest", "docker.io/org/app"),
                          ("ghcr.io/org/app:latest", "ghcr.io/org/app")]:
        found = kubelet.credentials(image)
        assert found == [creds("skylake")], image
        response = kubelet.execs[-1].response
        registry = image.split("/", 1)[0]
        assert list(response["auth"]) == [registry], "only the registry asked about"
        assert response["apiVersion"] == PROVIDER_API and response["cacheKeyType"] == "Registry"
        assert kubelet.execs[-1].stderr == b"", "nothing on stderr when all is well"
        node.pull(image, found[0])
        assert_build(node, image, "skylake", hub, routed)
        remove(node, image)
    cache = cri.go_duration_seconds(kubelet.execs[-1].response["cacheDuration"])
    assert 0 < cache < token_lifetime(hub), "the kubelet asks again before a token would expire"
    # an image no matchImages entry covers: the kubelet does not run the plugin
    before = len(kubelet.execs)
    assert kubelet.credentials("quay.io/org/app:latest") == []
    assert len(kubelet.execs) == before


def test_credential_provider_from_the_environment(node, hub, tmp_path):
    """The account in the provider's env (or the kubelet's own environment, which the plugin inherits)."""
    user, password = creds("zen2")
    kubelet = kubelet_with(tmp_path, hub, env={"METAHUB_NODE_USERNAME": user, "METAHUB_NODE_PASSWORD": password})
    image = "docker.io/org/app:latest"
    found = kubelet.credentials(image)
    assert found == [creds("zen2")]
    node.pull(image, found[0])
    assert_build(node, image, "zen2", hub, "docker.io/org/app")
    remove(node, image)


def test_a_pod_pull_secret_comes_before_the_nodes_provider(node, hub, tmp_path):
    """The kubelet tries a pod's imagePullSecrets before the node's providers: a secret for the MetaHub host makes
    this zen2 node pull the skylake build (the trap docs/nodes.md names)."""
    kubelet = kubelet_with(tmp_path, hub, env=dict(zip(["METAHUB_NODE_USERNAME", "METAHUB_NODE_PASSWORD"], creds("zen2"))))
    image = f"{hub.host}/org/app:latest"
    pod_secret = {"auths": {hub.host: dict(zip(["username", "password"], creds("skylake")))}}
    found = kubelet.credentials(image, pull_secrets=[pod_secret])
    assert found == [creds("skylake"), creds("zen2")], "the pod's secret first"
    node.pull(image, found[0])  # the first that works is the one used
    assert_build(node, image, "skylake", hub, "org/app")
    remove(node, image)


def refused(result: cri.ExecResult, *expected: str, secrets: tuple[str, ...] = ()) -> str:
    assert result.returncode != 0
    assert result.stdout == b"", "nothing but a response on stdout"
    message = result.stderr.decode()
    assert len(message.strip().splitlines()) == 1, message
    for e in expected:
        assert e in message, message
    for s in secrets:
        assert s not in message, message
    return message


def test_credential_provider_refuses_what_it_cannot_trust(hub, tmp_path):
    user, password = creds("skylake")
    request = lambda image: (json.dumps({"kind": "CredentialProviderRequest", "apiVersion": PROVIDER_API, "image": image}) + "\n").encode()  # noqa: E731

    # a credentials file others can read: refused, naming the file and the fix
    for mode in (0o640, 0o644, 0o606):
        loose = write_credentials(tmp_path / f"loose-{mode:o}", "skylake", mode)
        kubelet = kubelet_with(tmp_path, hub, env={"METAHUB_NODE_CREDENTIALS_FILE": str(loose)})
        provider = kubelet.providers()[0]
        result = kubelet.exec_plugin(provider, "docker.io/org/app")
        refused(result, str(loose), f"chmod 600 {loose}", f"{mode:04o}", secrets=(password,))
        with pytest.raises(cri.PluginFailed):
            kubelet.check_response(provider, result)
        assert stat.S_IMODE(os.stat(loose).st_mode) == mode, "the plugin changes nothing"

    secret = write_credentials(tmp_path / "node-credentials", "skylake")
    kubelet = kubelet_with(tmp_path, hub, env={"METAHUB_NODE_CREDENTIALS_FILE": str(secret)})
    provider = kubelet.providers()[0]
    bad_requests = {
        b"": "stdin is empty",
        b"not json": "invalid JSON at line 1 column 2",
        b'{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v2","image":"docker.io/a/b"}': "apiVersion",
        b'{"kind":"Pod","apiVersion":"credentialprovider.kubelet.k8s.io/v1","image":"docker.io/a/b"}': 'kind is "Pod"',
        b'{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}': "image is missing",
        b'{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1","image":"docker.io/a/b",'
        b'"serviceAccountToken":"sa-token-secret"': "invalid JSON",
    }
    for stdin, expected in bad_requests.items():
        refused(kubelet.exec_plugin(provider, "", stdin=stdin), expected, secrets=(password, "sa-token-secret"))

    # a registry the plugin was not told about, though matchImages sends it there
    refused(kubelet.exec_plugin(provider, "quay.io/org/app", stdin=request("quay.io/org/app")), "quay.io", "--mirror",
            secrets=(password,))

    # no account at all; half an account; two sources at once
    for env, expected in [({}, "METAHUB_NODE_CREDENTIALS_FILE"),
                          ({"METAHUB_NODE_USERNAME": user}, "METAHUB_NODE_PASSWORD"),
                          ({"METAHUB_NODE_CREDENTIALS_FILE": str(secret), "METAHUB_NODE_PASSWORD": password}, "both")]:
        k = kubelet_with(tmp_path, hub, env=env)
        p = k.providers()[0]
        clean = {n: v for n, v in os.environ.items() if not n.startswith("METAHUB_NODE_")}
        result = k.exec_plugin(p, "docker.io/org/app", environ=clean)
        refused(result, expected, secrets=(password,))

    # a file that is not one login:password line
    broken = tmp_path / "broken"
    broken.write_text(password + "\n")
    broken.chmod(0o600)
    k = kubelet_with(tmp_path, hub, env={"METAHUB_NODE_CREDENTIALS_FILE": str(broken)})
    refused(k.exec_plugin(k.providers()[0], "docker.io/org/app"), str(broken), "login:password", secrets=(password,))


# ---------------------------------------------------------------------------------------------
# where kubelet-supplied credentials go: every host of the image's hosts.toml, the fallback `server` too


class BasicChallenger:
    """A registry that answers everything with a Basic challenge and records the Authorization it gets back."""

    def __init__(self):
        import http.server
        import threading

        self.authorizations: list[str | None] = []
        seen = self.authorizations

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_GET(self):
                seen.append(self.headers.get("Authorization"))
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"no","detail":null}]}'
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="fallback"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="basic-challenger", daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_kubelet_credentials_reach_the_fallback_server_node_auth_does_not(node, zen2_node, hub):
    """containerd gives an AuthConfig (what the credential provider's answer and pull secrets become) to any host
    that challenges, as the CRI's AuthConfig carries no server address here; so when the mirror is down, the
    `server` fallback of hosts.toml receives the pool's password. The node's `configs."<metahub>".auth` is looked up
    by host and stays with MetaHub. Hence docs/nodes.md: with the credential provider, point `server` at MetaHub."""
    import base64

    fallback = BasicChallenger()
    try:
        image = "fallback.example/org/app:latest"
        for n in (node, zen2_node):
            n.mirror("fallback.example", "127.0.0.1:1", server=fallback.url)  # the mirror is down
        with pytest.raises(grpc.RpcError):
            node.pull(image, creds("skylake"))
        basic = "Basic " + base64.b64encode("{}:{}".format(*creds("skylake")).encode()).decode()
        assert basic in fallback.authorizations, fallback.authorizations
        fallback.authorizations.clear()
        with pytest.raises(grpc.RpcError):
            zen2_node.pull(image)
        assert fallback.authorizations and set(fallback.authorizations) == {None}, "no credentials for another host"
    finally:
        fallback.stop()


def test_the_documented_credential_provider_config_works_as_written(tmp_path):
    """docs/nodes.md's CredentialProviderConfig, as the kubelet reads it (only the credentials file path moved to a
    temp dir): every matchImages registry gets the account, for its own registry only."""
    import re

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "nodes.md").read_text()
    block = re.search(r"```yaml\n(# /etc/kubernetes/credential-providers\.yaml\n.*?)```", doc, re.S)
    assert block, "the example is in docs/nodes.md"
    config = yaml.safe_load(block.group(1))
    provider = config["providers"][0]
    secret = write_credentials(tmp_path / "node-credentials", "skylake")
    assert provider["env"] == [{"name": "METAHUB_NODE_CREDENTIALS_FILE", "value": "/etc/metahub/node-credentials"}]
    provider["env"][0]["value"] = str(secret)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / provider["name"]).symlink_to(METAHUB_BIN)
    (tmp_path / "config.json").write_text(json.dumps(config))
    kubelet = cri.Kubelet(config_path=tmp_path / "config.json", bin_dir=bin_dir)
    for registry in provider["matchImages"]:
        assert kubelet.credentials(f"{registry}/org/app:latest") == [creds("skylake")], registry
        assert list(kubelet.execs[-1].response["auth"]) == [registry]
    assert kubelet.credentials("quay.io/org/app:latest") == []
