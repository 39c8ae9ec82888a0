"""A Kubernetes node without the kubelet: containerd with its CRI plugin, driven over CRI v1 gRPC as the kubelet
drives it, and the kubelet's exec credential provider path (for tests/e2e/test_cri.py).

- `CriNode`: Debian's containerd with the CRI plugin enabled, its own root, state, socket and `config_path`
  (hosts.toml) directory, optionally the node's `configs."HOST".auth` block; `pull`/`status`/`remove` are the
  ImageService calls the kubelet's image manager makes. Stubs come from tests/cri_v1.proto, generated at run time.
- `Kubelet`: what the kubelet does with a `CredentialProviderConfig` before it calls PullImage (kubernetes
  `pkg/credentialprovider/plugin/plugin.go`, `keyring.go`, `kuberuntime_image.go`): matchImages, exec of
  `<bin dir>/<name> args…` with the config's env added to its own and the request on stdin, the checks on the
  response (apiVersion, kind, strict fields, cacheKeyType), then the auth keys matched against the image.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import registry_push
from conftest import CMD_TIMEOUT, PULL_UNNEEDED_PLUGINS, Proc, run, wait_until

PROTO = Path(__file__).resolve().parents[1] / "cri_v1.proto"



def load_stubs(out_dir: Path):
    """(messages, services) generated from tests/cri_v1.proto with grpcio-tools' protoc."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO)])
    assert rc == 0, f"protoc failed on {PROTO}"
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))
    return importlib.import_module("cri_v1_pb2"), importlib.import_module("cri_v1_pb2_grpc")


def toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for the characters used here


@dataclass
class CriNode:
    """containerd with CRI, as a node runs it; images live in the CRI's `k8s.io` namespace."""

    name: str
    base: Path
    sock: Path
    hosts_dir: Path
    proc: Proc
    pb: object
    grpc_mod: object
    channel: object = None
    images: object = None
    runtime: object = None

    @classmethod
    def start(cls, workdir: Path, name: str, stubs, node_auth: dict[str, tuple[str, str]] | None = None) -> "CriNode":
        import grpc

        pb, pb_grpc = stubs
        base = workdir / name
        base.mkdir()
        sock = base / "containerd.sock"
        hosts_dir = base / "certs.d"
        hosts_dir.mkdir()
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f"root = {toml_str(str(base / 'root'))}",
            f"state = {toml_str(str(base / 'state'))}",
            f"disabled_plugins = {json.dumps(PULL_UNNEEDED_PLUGINS)}",
            f"[grpc]\n  address = {toml_str(str(sock))}",
            f"[ttrpc]\n  address = {toml_str(str(sock) + '.ttrpc')}",
            '[debug]\n  address = ""\n  level = "info"',
            '[metrics]\n  address = ""',
            # no TCP, a streaming server on loopback only, no AppArmor/SELinux: a pull needs none of them
            f"[{cri}]",
            "  disable_tcp_service = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  enable_selinux = false",
            "  disable_apparmor = true",
            # the native snapshotter unpacks without mounts: works where overlayfs is not allowed
            f'[{cri}.containerd]\n  snapshotter = "native"',
            f"[{cri}.cni]\n  bin_dir = {toml_str(str(base / 'cni-bin'))}\n  conf_dir = {toml_str(str(base / 'cni-conf'))}",
            f"[{cri}.registry]\n  config_path = {toml_str(str(hosts_dir))}",
        ]
        for host, (user, password) in (node_auth or {}).items():
            # the deprecated block docs/nodes.md replaces with the credential provider; still honoured by 1.6-2.x
            lines.append(f"[{cri}.registry.configs.{toml_str(host)}.auth]\n  username = {toml_str(user)}\n  password = {toml_str(password)}")
        config = base / "config.toml"
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        proc = Proc(name, ["containerd", "--config", str(config)], workdir)
        channel = grpc.insecure_channel(f"unix://{sock}")
        node = cls(name=name, base=base, sock=sock, hosts_dir=hosts_dir, proc=proc, pb=pb, grpc_mod=pb_grpc, channel=channel,
                   images=pb_grpc.ImageServiceStub(channel), runtime=pb_grpc.RuntimeServiceStub(channel))
        wait_until(lambda: sock.exists() and node.version().runtime_api_version == "v1", f"{name}: CRI v1 Version", proc=proc)
        return node

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.proc.stop()

    # --- hosts.toml (config_path): read by containerd on every pull, so tests write them as they go

    def plain_http(self, host: str) -> None:
        """A registry on plain HTTP, as a node would configure one without TLS (MetaHub on 127.0.0.1 here)."""
        self._hosts_toml(host, f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')

    def mirror(self, registry: str, metahub_host: str, server: str = "http://127.0.0.1:1") -> None:
        """`registry`'s names pulled through MetaHub (containerd adds `?ns=<registry>`); `server` is the fallback, by
        default a closed local port, so nothing leaves the machine should the mirror fail."""
        self._hosts_toml(registry, f'server = "{server}"\n[host."http://{metahub_host}"]\n  capabilities = ["pull", "resolve"]\n')

    def _hosts_toml(self, host: str, text: str) -> None:
        d = self.hosts_dir / host
        d.mkdir(exist_ok=True)
        (d / "hosts.toml").write_text(text)

    # --- the CRI calls the kubelet makes

    def version(self):
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=10)

    def pull(self, image: str, auth: tuple[str, str] | None = None) -> str:
        """PullImage, with an AuthConfig as the kubelet builds it from a keyring entry (username and password, no
        server address) or without one; returns the image_ref."""
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image))
        if auth is not None:
            request.auth.CopyFrom(self.pb.AuthConfig(username=auth[0], password=auth[1]))
        return self.images.PullImage(request, timeout=CMD_TIMEOUT).image_ref

    def status(self, image: str):
        """ImageStatus(verbose): (Image or None, the parsed "info" JSON: containerd's chainID and imageSpec)."""
        r = self.images.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image), verbose=True), timeout=30)
        if not r.HasField("image"):
            return None, {}
        return r.image, json.loads(r.info["info"]) if "info" in r.info else {}

    def remove(self, image: str) -> None:
        self.images.RemoveImage(self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)), timeout=30)

    def list_tags(self) -> list[str]:
        return [t for i in self.images.ListImages(self.pb.ListImagesRequest(), timeout=30).images for t in i.repo_tags]

    # --- what was pulled, read twice: from ImageStatus and from containerd's content store

    def content(self, digest: str) -> bytes:
        return run(["ctr", "-a", str(self.sock), "-n", "k8s.io", "content", "get", digest]).stdout

    def pulled_build(self, image: str, arch: str = "amd64") -> "Pulled":
        img, info = self.status(image)
        assert img is not None, f"{image} is not on {self.name}"
        label = info["imageSpec"]["config"]["Labels"]["variant"]
        repo_digest = img.repo_digests[0].split("@", 1)[1]
        top = json.loads(self.content(repo_digest))
        manifest = top
        if "manifests" in top:
            entries = [m for m in top["manifests"] if m.get("platform", {}).get("os") == "linux" and m["platform"].get("architecture") == arch]
            assert entries, f"no linux/{arch} entry in {top}"
            manifest = json.loads(self.content(entries[0]["digest"]))
        assert manifest["config"]["digest"] == img.id, "the image ID is the config of the entry containerd took"
        layer_text = registry_push.read_variant_from_layer(self.content(manifest["layers"][0]["digest"]))
        return Pulled(label=label, layer_text=layer_text, repo_digest=repo_digest, top=top, image_id=img.id,
                      repo_tags=list(img.repo_tags))


@dataclass
class Pulled:
    label: str  # config.Labels.variant, from ImageStatus verbose info
    layer_text: str  # /variant.txt of the layer, from the content store
    repo_digest: str  # the manifest the name resolved to (a filtered index, for MetaHub)
    top: dict
    image_id: str
    repo_tags: list[str]


# ---------------------------------------------------------------------------------------------
# the kubelet's credential provider path


def normalized_repository(image: str) -> str:
    """The repository the kubelet looks credentials up for (`parsers.ParseImageName`): Docker's normalized name
    without tag or digest (`nginx` -> `docker.io/library/nginx`)."""
    name = image.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if not rest or not (("." in first) or (":" in first) or first == "localhost"):
        first, rest = "docker.io", name
        if "/" not in rest:
            rest = "library/" + rest
    last = rest.rsplit("/", 1)
    if ":" in last[-1]:
        last[-1] = last[-1].split(":", 1)[0]
    return f"{first}/{'/'.join(last)}"


def _split(url: str) -> tuple[list[str], str, str]:
    parsed = urllib.parse.urlsplit("https://" + url)
    host, port = parsed.hostname or "", str(parsed.port or "")
    # keep the host as written (urlsplit lowercases; the kubelet's glob match is case-sensitive too, names are lower)
    return host.split("."), port, parsed.path


def urls_match(glob: str, target: str) -> bool:
    """credentialprovider.URLsMatchStr: same port, same number of host parts each matching its glob, and the glob's
    path a prefix of the target's."""
    g_host, g_port, g_path = _split(glob)
    t_host, t_port, t_path = _split(target)
    if g_port != t_port or len(g_host) != len(t_host) or not t_path.startswith(g_path):
        return False
    return all(fnmatch.fnmatchcase(t, g) for g, t in zip(g_host, t_host))


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration_seconds(text: str) -> float:
    """time.ParseDuration, for the non-negative durations a metav1.Duration carries."""
    parts = _GO_DURATION.findall(text)
    if text == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _strict_object(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate field in {keys}")
    return dict(pairs)


class PluginFailed(Exception):
    """The exec plugin failed: the kubelet logs this and pulls without the plugin's credentials."""


@dataclass
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    response: dict | None = None


@dataclass
class Kubelet:
    """The kubelet's credential provider machinery for one CredentialProviderConfig file and plugin directory."""

    config_path: Path
    bin_dir: Path
    execs: list[ExecResult] = field(default_factory=list)

    def providers(self) -> list[dict]:
        config = json.loads(self.config_path.read_text())
        assert config["apiVersion"] == "kubelet.config.k8s.io/v1" and config["kind"] == "CredentialProviderConfig", config
        for p in config["providers"]:
            assert p["name"] and "/" not in p["name"], p
            assert p["matchImages"] and p["defaultCacheDuration"], "required by the kubelet's validation"
            assert p["apiVersion"] == "credentialprovider.kubelet.k8s.io/v1", p
            assert (self.bin_dir / p["name"]).exists(), f"plugin binary executable {self.bin_dir / p['name']} did not exist"
        return config["providers"]

    def exec_plugin(self, provider: dict, repository: str, stdin: bytes | None = None,
                    environ: dict[str, str] | None = None) -> ExecResult:
        """`ENV=… <bin dir>/<name> args… <<<request`, the environment the kubelet's own (`environ`, default this
        process's) plus the config's env."""
        request = stdin if stdin is not None else (json.dumps(
            {"kind": "CredentialProviderRequest", "apiVersion": provider["apiVersion"], "image": repository},
            separators=(",", ":")) + "\n").encode()
        env = dict(os.environ if environ is None else environ)
        env.update({e["name"]: e["value"] for e in provider.get("env") or []})
        p = subprocess.run([str(self.bin_dir / provider["name"]), *(provider.get("args") or [])], input=request,
                           capture_output=True, env=env, timeout=60)
        result = ExecResult(p.returncode, p.stdout, p.stderr)
        self.execs.append(result)
        return result

    def check_response(self, provider: dict, result: ExecResult) -> dict:
        """What execPlugin and provide() check before using an answer."""
        if result.returncode != 0:
            raise PluginFailed(f"exit {result.returncode}: {result.stderr.decode(errors='replace')}")
        doc = json.loads(result.stdout, object_pairs_hook=_strict_object)
        if doc.get("apiVersion") != provider["apiVersion"]:
            raise PluginFailed(f"apiVersion from credential plugin response did not match: {doc.get('apiVersion')!r}")
        if doc.get("kind") != "CredentialProviderResponse":
            raise PluginFailed(f"unexpected Kind: {doc.get('kind')!r}")
        unknown = set(doc) - {"kind", "apiVersion", "cacheKeyType", "cacheDuration", "auth"}
        if unknown:
            raise PluginFailed(f"strict decoding error: unknown fields {sorted(unknown)}")
        if doc.get("cacheKeyType") not in ("Image", "Registry", "Global"):
            raise PluginFailed(f"credential provider plugin did not return a valid cacheKeyType: {doc.get('cacheKeyType')!r}")
        if "cacheDuration" in doc:
            go_duration_seconds(doc["cacheDuration"])
        for key, auth in (doc.get("auth") or {}).items():
            if set(auth) - {"username", "password"}:
                raise PluginFailed(f"strict decoding error: unknown fields in auth[{key}]")
        result.response = doc
        return doc

    def credentials(self, image: str, pull_secrets: list[dict] | None = None) -> list[tuple[str, str]]:
        """Every (username, password) the kubelet would try for `image`, in its order: first the pod's
        imagePullSecrets (`.dockerconfigjson` documents) whose keys match, then, for each provider whose matchImages
        match, the plugin's auth entries whose key matches; longest key first within each."""
        repository = normalized_repository(image)
        found = []
        for secret in pull_secrets or []:
            auths = secret["auths"]
            for key in sorted(auths, reverse=True):
                if urls_match(key, repository):
                    found.append((auths[key]["username"], auths[key]["password"]))
        for provider in self.providers():
            if not any(urls_match(m, repository) for m in provider["matchImages"]):
                continue
            doc = self.check_response(provider, self.exec_plugin(provider, repository))
            for key in sorted(doc.get("auth") or {}, reverse=True):
                if urls_match(key, repository):
                    auth = doc["auth"][key]
                    found.append((auth.get("username", ""), auth.get("password", "")))
        return found
