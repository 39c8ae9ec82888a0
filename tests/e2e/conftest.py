"""Fixtures for the end-to-end tests: real registries, moto, containerd, Docker Engine, and metahub itself.

Every process listens on a free 127.0.0.1 port, logs to a file under the session's temp dir and is
killed at the end of the session. When a test fails, the tails of all logs are attached to its report.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
import log_secrets  # noqa: E402
import registry_push  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared test CA
import tls_ca  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METAHUB_BIN = os.environ.get("METAHUB_BIN", str(ROOT / "target" / "debug" / "metahub"))
CMD_TIMEOUT = 120  # seconds for one client command (pull, copy, ...)
START_TIMEOUT = 30  # seconds for a server to answer

# name -> (features, match mode); account login "m-NAME", password "pw-NAME-secret".
MACHINE_TYPES: dict[str, tuple[list[str], str]] = {
    "skylake": (["cpu:skylake"], "best"),
    "cascadelake-a100": (["cpu:cascadelake", "nvcap:8.6"], "best"),
    "zen2": (["cpu:zen2"], "best"),
    "broadwell-m60": (["cpu:broadwell", "nvcap:5.2"], "best"),
    "exact-skylake": (["cpu:skylake"], "exact"),
    "graviton": (["cpu:neoverse_v1"], "best"),
}


def creds(machine_type: str) -> tuple[str, str]:
    return f"m-{machine_type}", f"pw-{machine_type}-secret"


# ---------------------------------------------------------------------------------------------
# processes and commands


_PROCS: list["Proc"] = []
_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A background process with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # its own process group, so stop() gets its children too
        )
        _PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(text[-lines:])


def wait_until(check, what: str, timeout: float = START_TIMEOUT, proc: Proc | None = None):
    """Poll `check()` until it returns a truthy value; fail with the process log otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.tail()}")
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.1)
    tail = f"\n{proc.tail()}" if proc else ""
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} (last: {last!r}){tail}")


def run(cmd: list[str], *, input: bytes | None = None, env: dict | None = None, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with a timeout; on failure raise with its full output."""
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, env={**os.environ, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None
    if check and p.returncode != 0:
        raise AssertionError(
            f"exit {p.returncode}: {' '.join(cmd)}\nstdout:\n{p.stdout.decode(errors='replace')}\nstderr:\n{p.stderr.decode(errors='replace')}"
        )
    return p


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _PROCS:
        for p in _PROCS:
            report.sections.append((f"log {p.name} ({p.log_path})", p.tail()))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("e2e")
    print(f"\ne2e work dir and logs: {d}")
    _LOG_DIRS.append(d)
    yield d
    stop_all()


_LOG_DIRS: list[Path] = []


def pytest_sessionfinish(session, exitstatus):
    """No password, token or admin secret in any log of the session (issue 20)."""
    if not _LOG_DIRS:
        return
    stop_all()  # logs complete and closed
    accounts = dict(creds(mt) for mt in MACHINE_TYPES)
    secrets = [*accounts.values(), ADMIN_SECRET, *log_secrets.ISSUED_TOKENS]
    log_secrets.report(session, log_secrets.leaks(_LOG_DIRS[0], secrets, accounts))


def stop_all() -> None:
    """Stop every process this session started; one that resists must not keep the others alive."""
    for p in reversed(_PROCS):
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001
            print(f"stopping {p.name} (pid {p.popen.pid}) failed: {e!r}", file=sys.stderr)


# a session killed by -x, Ctrl-C or an internal error still reaps its servers
atexit.register(stop_all)


# ---------------------------------------------------------------------------------------------
# upstream registries


class _StorageHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        pass


@dataclass
class StaticServer:
    root: Path
    port: int
    server: http.server.ThreadingHTTPServer
    hits: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_static_server(root: Path) -> StaticServer:
    """Serve `root` read-only over HTTP in a thread: stands in for the upstream's blob storage (S3, CDN)."""
    hits: list[str] = []

    class Handler(_StorageHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def do_HEAD(self):
            hits.append(self.path)
            super().do_HEAD()

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="static-storage", daemon=True).start()
    return StaticServer(root=root, port=server.server_address[1], server=server, hits=hits)


@dataclass
class Upstream:
    name: str
    port: int
    root: Path  # the storage root directory
    proc: Proc
    storage: StaticServer | None = None  # the file server blobs are redirected to
    ca_file: Path | None = None  # served over HTTPS with a certificate this CA signed

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()
        if self.storage:
            self.storage.stop()


def start_registry(workdir: Path, name: str, redirect: bool = False, login: tuple[str, str] | None = None,
                   tls: tls_ca.Certificate | None = None) -> Upstream:
    """`docker-registry serve CONFIG` with filesystem storage; with `redirect`, blobs 307 to a file server; with
    `login`, every request needs that Basic login (htpasswd); with `tls`, it serves HTTPS with that certificate."""
    d = workdir / name
    root = d / "data"
    root.mkdir(parents=True)
    port = free_port()
    storage = start_static_server(root) if redirect else None
    lines = [
        "version: 0.1",
        "log: {level: info, accesslog: {disabled: true}}",
        "storage:",
        f"  filesystem: {{rootdirectory: {root}}}",
        "  delete: {enabled: true}",
        f"http: {{addr: '127.0.0.1:{port}', secret: e2e-test-secret}}",
    ]
    if tls:
        lines[-1] = (f"http: {{addr: '127.0.0.1:{port}', secret: e2e-test-secret, "
                     f"tls: {{certificate: {tls.cert_file}, key: {tls.key_file}}}}}")
    if login:
        htpasswd = d / "htpasswd"
        htpasswd.write_bytes(run(["htpasswd", "-Bbn", login[0], login[1]]).stdout)
        lines += ["auth:", f"  htpasswd: {{realm: e2e, path: {htpasswd}}}"]
    if storage:
        # distribution's redirect middleware answers blob GETs with 307 to baseurl + the storage path
        # (/docker/registry/v2/blobs/sha256/ab/abcd.../data), which the file server maps onto `root`.
        lines += ["middleware:", "  storage:", f"    - {{name: redirect, options: {{baseurl: '{storage.url}'}}}}"]
    config = d / "config.yml"
    config.write_text("\n".join(lines) + "\n")
    proc = Proc(name, ["docker-registry", "serve", str(config)], workdir)
    up = Upstream(name=name, port=port, root=root, proc=proc, storage=storage, ca_file=tls.ca_file if tls else None)
    ready = 401 if login else 200
    verify = str(tls.ca_file) if tls else True
    wait_until(lambda: requests.get(f"{up.url}/v2/", timeout=2, verify=verify).status_code == ready, f"{name} /v2/",
               proc=proc)
    return up


@pytest.fixture(scope="session")
def upstream(workdir) -> Upstream:
    up = start_registry(workdir, "upstream")
    yield up
    up.stop()


@pytest.fixture(scope="session")
def redirecting_upstream(workdir) -> Upstream:
    up = start_registry(workdir, "upstream-redirect", redirect=True)
    yield up
    up.stop()


@pytest.fixture(scope="session")
def images(upstream, redirecting_upstream) -> registry_push.Pushed:
    """The test content, pushed to both upstreams (deterministic, so digests are the same on both)."""
    pushed = registry_push.push_test_content(upstream.url)
    again = registry_push.push_test_content(redirecting_upstream.url)
    assert {k: v[2] for k, v in pushed.tags.items()} == {k: v[2] for k, v in again.tags.items()}
    return pushed


# ---------------------------------------------------------------------------------------------
# moto (DynamoDB)


@dataclass
class Moto:
    port: int
    proc: Proc

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


_moto: Moto | None = None


def start_moto(workdir: Path) -> Moto:
    """One moto_server per session, started on first use (only the dynamodb store needs it)."""
    global _moto
    if _moto is None or not _moto.proc.alive():
        port = free_port()
        # the interpreter running pytest is the one tests/run.sh installed moto into
        proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], workdir)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/moto-api/", timeout=2).status_code < 500, "moto_server", proc=proc)
        _moto = Moto(port=port, proc=proc)
    return _moto


@pytest.fixture(scope="session")
def moto(workdir) -> Moto:
    return start_moto(workdir)


# ---------------------------------------------------------------------------------------------
# metahub


@dataclass
class Metahub:
    port: int
    store: str
    upstream: Upstream
    proc: Proc | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run `metahub ARGS --store STORE` (only while serve is not running: the file store is single process)."""
        return run([METAHUB_BIN, *args, "--store", self.store], input=input, env=self.env, check=check)

    def put_machine_type(self, name: str, features: list[str], match: str = "best") -> None:
        args = ["machine-type", "put", name]
        for f in features:
            args += ["--feature", f]
        if match != "best":
            args += ["--match", match]
        self.cli(*args)

    def put_account(self, login: str, password: str, machine_type: str) -> None:
        self.cli("account", "put", login, "--machine-type", machine_type, "--password-stdin", input=password.encode())

    def start(self, workdir: Path, name: str) -> None:
        self.proc = Proc(
            name,
            [
                METAHUB_BIN, "serve",
                "--listen", self.host,
                "--public-url", self.url,
                "--upstream", self.upstream.url,
                "--store", self.store,
            ],
            workdir,
            env={"RUST_LOG": os.environ.get("RUST_LOG", "info"), "RUST_BACKTRACE": "1", **self.env},
        )
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=2).status_code == 401, f"{name} GET /v2/ -> 401", proc=self.proc)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def _require_metahub() -> None:
    if not (os.path.isfile(METAHUB_BIN) and os.access(METAHUB_BIN, os.X_OK)):
        pytest.fail(f"metahub binary not found at {METAHUB_BIN} (build it or set METAHUB_BIN)")


@pytest.fixture(scope="session")
def metahub_factory(workdir):
    """`metahub_factory(store="file"|"dynamodb", upstream=Upstream)`: a running metahub with every machine type
    of MACHINE_TYPES and one account each (see `creds`), `env` added to its environment. Instances are shared per
    (store, upstream, env)."""
    cache: dict[tuple, Metahub] = {}

    def make(store: str = "file", upstream: Upstream | None = None, shared: bool = True,
             env: dict[str, str] | None = None) -> Metahub:
        assert upstream is not None
        env = env or {}
        key = (store, upstream.url, tuple(sorted(env.items())))
        if shared and key in cache:
            return cache[key]
        _require_metahub()
        n = next(_counter)
        name = f"metahub-{n}-{store}"
        if store == "file":
            d = workdir / name
            d.mkdir()
            hub = Metahub(port=free_port(), store=f"file:{d / 'store.redb'}", upstream=upstream, env=env)
        elif store == "dynamodb":
            m = start_moto(workdir)
            hub = Metahub(port=free_port(), store=f"dynamodb:metahub-e2e-{n}", upstream=upstream, env={**m.env, **env})
            hub.cli("store", "init")
        else:
            raise ValueError(store)
        for mt, (features, match) in MACHINE_TYPES.items():
            hub.put_machine_type(mt, features, match)
            hub.put_account(*creds(mt), mt)
        hub.start(workdir, name)
        if shared:
            cache[key] = hub
        return hub

    yield make
    for hub in cache.values():
        hub.stop()


@pytest.fixture(scope="session", params=["file", "dynamodb"])
def store(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def metahub(metahub_factory, upstream, images, store) -> Metahub:
    """metahub in front of the plain upstream, for each store kind."""
    return metahub_factory(store, upstream)


@pytest.fixture(scope="session")
def metahub_file(metahub_factory, upstream, images) -> Metahub:
    """metahub (file store) in front of the plain upstream, for tests that need one store only."""
    return metahub_factory("file", upstream)


@pytest.fixture(scope="session")
def metahub_redirect(metahub_factory, redirecting_upstream, images) -> Metahub:
    """metahub (file store) in front of the redirecting upstream."""
    return metahub_factory("file", redirecting_upstream)


# ---------------------------------------------------------------------------------------------
# containerd


@dataclass
class Containerd:
    sock: Path
    proc: Proc
    _ns: itertools.count = field(default_factory=lambda: itertools.count(1))

    def namespace(self) -> str:
        """A fresh namespace, so images of one test do not mix with another's."""
        return f"e2e{next(self._ns)}"

    def ctr(self, *args: str, namespace: str = "default", timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ctr", "-a", str(self.sock), "-n", namespace, *args], timeout=timeout, check=check)

    def pull(self, ref: str, namespace: str, user: str | None = None, platform: str | None = None,
             plain_http: bool = True) -> subprocess.CompletedProcess:
        """`ctr images pull`: over plain HTTP, or (plain_http=False) over HTTPS without verifying the certificate."""
        # the native snapshotter unpacks without mounts: works where overlayfs is not allowed
        args = ["images", "pull", "--snapshotter", "native"]
        if plain_http:
            args += ["--plain-http"]
        else:
            # ctr 1.6 speaks plain HTTP to a 127.0.0.1 registry unless a hosts.toml names its https:// server;
            # skip_verify there is --skip-verify for that host
            host = ref.split("/", 1)[0]
            hosts_dir = self.sock.parent / "hosts-https"
            (hosts_dir / host).mkdir(parents=True, exist_ok=True)
            (hosts_dir / host / "hosts.toml").write_text(
                f'server = "https://{host}"\n[host."https://{host}"]\n  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')
            args += ["--hosts-dir", str(hosts_dir)]
        if user:
            args += ["--user", user]
        if platform:
            args += ["--platform", platform]
        return self.ctr(*args, ref, namespace=namespace)

    def image_target(self, ref: str, namespace: str) -> str:
        """The digest the image name points at (an index or a manifest)."""
        out = self.ctr("images", "ls", namespace=namespace).stdout.decode()
        for line in out.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        raise AssertionError(f"{ref} not in ctr images ls:\n{out}")

    def content(self, digest: str, namespace: str) -> bytes:
        return self.ctr("content", "get", digest, namespace=namespace).stdout

    def pulled_variant(self, ref: str, namespace: str, arch: str = "amd64") -> tuple[str, str, dict]:
        """(config label variant, layer variant.txt, top-level manifest JSON) of what containerd would run:
        the first entry of the index for linux/ARCH, as containerd's platform matcher picks it."""
        top_digest = self.image_target(ref, namespace)
        top = json.loads(self.content(top_digest, namespace))
        manifest = top
        if "manifests" in top:
            entries = [m for m in top["manifests"] if m.get("platform", {}).get("os") == "linux" and m.get("platform", {}).get("architecture") == arch]
            assert entries, f"no linux/{arch} entry in {top}"
            manifest = json.loads(self.content(entries[0]["digest"], namespace))
        config = json.loads(self.content(manifest["config"]["digest"], namespace))
        layer = self.content(manifest["layers"][0]["digest"], namespace)
        return config["config"]["Labels"]["variant"], registry_push.read_variant_from_layer(layer), top


# containerd plugins a pull does not need and this machine may not support: the snapshotters need special
# filesystems (tests/e2e/cri.py's containerd disables them too)
PULL_UNNEEDED_PLUGINS = [
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.opt",
    "io.containerd.tracing.processor.v1.otlp",
]


@pytest.fixture(scope="session")
def containerd(workdir) -> Containerd:
    d = workdir / "containerd"
    d.mkdir()
    sock = d / "containerd.sock"
    # cri needs kernel features and privileges a sandbox may lack; it is not needed to pull with ctr.
    disabled = ["io.containerd.grpc.v1.cri", *PULL_UNNEEDED_PLUGINS]
    config = d / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{d / "root"}"\n'
        f'state = "{d / "state"}"\n'
        f"disabled_plugins = {json.dumps(disabled)}\n"
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n  level = "info"\n'
        '[metrics]\n  address = ""\n'
    )
    proc = Proc("containerd", ["containerd", "--config", str(config)], workdir)
    c = Containerd(sock=sock, proc=proc)
    wait_until(lambda: sock.exists() and c.ctr("version", timeout=10, check=False).returncode == 0, "containerd socket", proc=proc)
    yield c
    proc.stop()


# ---------------------------------------------------------------------------------------------
# skopeo and podman


def skopeo(*args: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    return run(["skopeo", *args], timeout=timeout, check=check)


def skopeo_copy_variant(ref: str, dest: Path, creds_: tuple[str, str] | None = None, arch: str | None = None) -> tuple[str, str, dict]:
    """`skopeo copy docker://REF dir:DEST`; returns (config label variant, layer variant.txt, manifest)."""
    args = []
    if arch:
        args += ["--override-arch", arch]
    args += ["copy", "--src-tls-verify=false"]
    if creds_:
        args += ["--src-creds", f"{creds_[0]}:{creds_[1]}"]
    args += [f"docker://{ref}", f"dir:{dest}"]
    skopeo(*args)
    manifest = json.loads((dest / "manifest.json").read_text())
    blob = lambda d: (dest / d.split(":", 1)[1]).read_bytes()  # noqa: E731
    config = json.loads(blob(manifest["config"]["digest"]))
    layer = blob(manifest["layers"][0]["digest"])
    return config["config"]["Labels"]["variant"], registry_push.read_variant_from_layer(layer), manifest


def skopeo_raw(ref: str, creds_: tuple[str, str] | None = None) -> bytes:
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds_:
        args += ["--creds", f"{creds_[0]}:{creds_[1]}"]
    return skopeo(*args, f"docker://{ref}").stdout


def pull_variant(request, client: str, ref: str, creds_: tuple[str, str] | None, tmp_path) -> str:
    """Pull REF with CLIENT's default platform (skopeo, podman, ctr or docker); the `variant` label of the image it
    got. A failed pull raises AssertionError with the client's output."""
    if client == "skopeo":
        label, text, _ = skopeo_copy_variant(ref, tmp_path / "skopeo", creds_)
        assert label == text
        return label
    if client == "ctr":
        containerd = request.getfixturevalue("containerd")
        ns = containerd.namespace()
        containerd.pull(ref, ns, user=":".join(creds_) if creds_ else None)
        # ctr fetched only the manifest its matcher chose: reading its layer proves which one it was
        label, text, top = containerd.pulled_variant(ref, ns)
        assert label == text
        return label
    if client == "docker":
        engine = request.getfixturevalue("docker")
        host = ref.split("/", 1)[0]
        docker_client = engine.login(host, creds_)[0] if creds_ else engine.client()
        try:
            pulled = docker_client.pull(ref)
        finally:
            engine.remove_images()  # the next pull of the same name must fetch again
        assert pulled.label == pulled.text
        return pulled.label
    return request.getfixturevalue(client).pull_variant(ref, creds_)


@dataclass
class Podman:
    base: Path

    def __call__(self, *args: str, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [
            "podman",
            "--root", str(self.base / "root"),
            "--runroot", str(self.base / "run"),
            "--tmpdir", str(self.base / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "none",
            *args,
        ]
        # its own HOME and an empty auth file: never read or write the host's configuration or credentials
        env = {"HOME": str(self.base), "REGISTRY_AUTH_FILE": str(self.base / "auth.json")}
        return run(cmd, timeout=timeout, check=check, env=env)

    def pull_variant(self, ref: str, creds_: tuple[str, str] | None = None, arch: str | None = None) -> str:
        args = ["pull", "--tls-verify=false", "-q"]
        if creds_:
            args += ["--creds", f"{creds_[0]}:{creds_[1]}"]
        if arch:
            args += ["--arch", arch]
        image_id = self(*args, ref).stdout.decode().strip().splitlines()[-1]
        return self("image", "inspect", "--format", '{{index .Labels "variant"}}', image_id).stdout.decode().strip()


@pytest.fixture
def podman() -> Podman:
    # podman refuses a --runroot longer than 50 characters, so pytest's tmp_path is too long
    base = Path(tempfile.mkdtemp(prefix="mh-podman-", dir="/tmp"))
    (base / "tmp").mkdir(parents=True)
    (base / "auth.json").write_text("{}")
    yield Podman(base)
    # vfs layers are plain directories; a failed pull may leave read-only bits, hence ignore_errors
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Docker Engine: an isolated dockerd of the session, one DOCKER_CONFIG per login


# The docker.io package's own client speaks the daemon's API version; METAHUB_DOCKER_CLI picks another one.
DOCKER_CLI = os.environ.get("METAHUB_DOCKER_CLI") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker")


@dataclass
class DockerPull:
    """What a `docker pull` left in the daemon: the image's config label and layer text (which build it is), its
    platform and the manifest digest the daemon recorded for the reference it pulled."""

    label: str
    text: str
    platform: str  # os/architecture[/variant]
    repo_digest: str  # the top-level manifest's digest (the index's, for a pull by tag of an index)


def _repository_of(ref: str) -> str:
    """`host:port/org/app:tag` or `…@sha256:…` -> `host:port/org/app`."""
    name = ref.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


@dataclass
class DockerClient:
    """The docker CLI against one DockerEngine with its own DOCKER_CONFIG (so with its own login, or none)."""

    engine: "DockerEngine"
    config: Path

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = CMD_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        env = {"DOCKER_HOST": f"unix://{self.engine.sock}", "DOCKER_CONFIG": str(self.config)}
        return run([DOCKER_CLI, *args], input=input, env=env, timeout=timeout, check=check)

    def pull(self, ref: str, platform: str | None = None) -> DockerPull:
        args = ["pull", "-q"] + (["--platform", platform] if platform else [])
        self(*args, ref)
        info = json.loads(self("image", "inspect", ref).stdout)[0]
        plat = "/".join(p for p in (info["Os"], info["Architecture"], info.get("Variant", "")) if p)
        # `docker save` of a pulled image: its one layer as a tar, to read the build's variant.txt
        with tempfile.TemporaryDirectory(dir=self.engine.base) as d:
            archive = Path(d) / "image.tar"
            self("save", "-o", str(archive), ref)
            with tarfile.open(archive) as tar:
                manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
                layer = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
        name = _repository_of(ref)
        digests = [d.split("@", 1)[1] for d in info.get("RepoDigests", []) if d.split("@", 1)[0] == name]
        return DockerPull(
            label=(info["Config"].get("Labels") or {}).get("variant", ""),
            text=registry_push.read_variant_from_layer(layer),
            platform=plat,
            repo_digest=digests[0] if digests else "",
        )


@dataclass
class DockerEngine:
    """`dockerd` with its own data root, exec root, pidfile and socket under one temp dir; no iptables, no bridge
    (pulls need neither). 127.0.0.0/8 registries are plain HTTP for Docker by default."""

    base: Path
    sock: Path
    proc: Proc
    storage_driver: str
    _configs: itertools.count = field(default_factory=lambda: itertools.count(1))

    def client(self) -> DockerClient:
        """A client with a fresh, empty DOCKER_CONFIG: anonymous until it logs in."""
        config = self.sock.parent / f"config-{next(self._configs)}"  # per driver: a vfs retry starts afresh
        config.mkdir()
        return DockerClient(self, config)

    def login(self, host: str, creds_: tuple[str, str], check: bool = True) -> tuple[DockerClient, subprocess.CompletedProcess]:
        """`docker login HOST` in a DOCKER_CONFIG of its own; (the client, the login's result)."""
        c = self.client()
        result = c("login", "-u", creds_[0], "--password-stdin", host, input=creds_[1].encode(), check=check)
        return c, result

    def remove_images(self) -> None:
        """Forget every pulled image and layer, so the next pull fetches its blobs again."""
        self.client()("image", "prune", "--all", "--force")

    def stop(self) -> None:
        """SIGTERM to the daemon's PID (it stops its own containerd), wait for it, then check nothing stays mounted."""
        if self.proc.alive():
            os.kill(self.proc.popen.pid, signal.SIGTERM)
            try:
                self.proc.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        self.proc.stop()  # whatever is left of its process group
        leftover = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(self.base) in line]
        for mountpoint in reversed(leftover):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        assert not leftover, f"dockerd left mounts behind: {leftover}"


def start_dockerd(workdir: Path, extra_args: list[str] | None = None) -> DockerEngine:
    """A daemon of its own (data root, exec root, socket, pidfile), with `extra_args` added to its command line
    (`--registry-mirror URL`, ...); stop it with `DockerEngine.stop`. Several can run side by side."""
    # a short base: unix socket paths (dockerd's and its containerd's) must stay under 108 bytes
    base = Path(tempfile.mkdtemp(prefix="mh-docker-", dir="/tmp"))
    failures = []
    for driver in ("overlay2", "vfs"):  # overlay2 needs a filesystem that can be its upper dir; vfs runs anywhere
        root = base / driver
        sock = root / "docker.sock"
        (root / "exec").mkdir(parents=True)
        cmd = [
            "dockerd",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"),
            "-H", f"unix://{sock}",
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--storage-driver", driver,
            *(extra_args or []),
        ]
        proc = Proc(f"dockerd-{driver}", cmd, workdir)
        engine = DockerEngine(base=base, sock=sock, proc=proc, storage_driver=driver)
        probe = engine.client()
        try:
            wait_until(lambda: sock.exists() and probe("version", timeout=10, check=False).returncode == 0, "dockerd socket", timeout=60, proc=proc)
            return engine
        except RuntimeError as e:
            failures.append(f"{driver}: {e}")
            proc.stop()
    shutil.rmtree(base, ignore_errors=True)
    raise RuntimeError("dockerd did not start:\n" + "\n".join(failures))


@pytest.fixture(scope="session")
def docker(workdir) -> DockerEngine:
    engine = start_dockerd(workdir)
    yield engine
    engine.stop()


# ---------------------------------------------------------------------------------------------
# raw HTTP against metahub (the token dance as clients do it)


def parse_challenge(value: str) -> dict[str, str]:
    """`Bearer realm="…",service="…"` -> {"scheme": "Bearer", "realm": …, "service": …}."""
    scheme, _, rest = value.partition(" ")
    out = {"scheme": scheme}
    for m in re.finditer(r'(\w+)="([^"]*)"', rest):
        out[m.group(1)] = m.group(2)
    return out


def challenge(hub: Metahub) -> dict[str, str]:
    r = requests.get(f"{hub.url}/v2/", timeout=10)
    assert r.status_code == 401, r.text
    return parse_challenge(r.headers["WWW-Authenticate"])


def get_token(hub: Metahub, machine_type: str | None = None, repo: str = "org/app", login: tuple[str, str] | None = None) -> str:
    """A token from `GET /token` with Basic auth, as docker/podman/skopeo fetch it."""
    ch = challenge(hub)
    r = requests.get(
        ch["realm"],
        params={"service": ch["service"], "scope": f"repository:{repo}:pull"},
        auth=login or creds(machine_type or "skylake"),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    log_secrets.ISSUED_TOKENS.add(r.json()["token"])
    return r.json()["token"]


def v2(hub: Metahub, path: str, token: str | None = None, method: str = "GET", accept: str = registry_push.ALL_MANIFEST_TYPES, **kw) -> requests.Response:
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{hub.url}/v2/{path}", headers=headers, allow_redirects=False, timeout=30, **kw)


def raw_request(url_base: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> tuple[int, dict, bytes]:
    """Send `path` byte for byte (requests/urllib3 would normalise `..` and percent-escapes)."""
    host, port = url_base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_registry_error(status: int, body: bytes | str, expected_status: int | set[int], codes: set[str] | None = None) -> dict:
    """The distribution-spec envelope `{"errors":[{"code","message","detail"}]}` with the right status and code."""
    statuses = {expected_status} if isinstance(expected_status, int) else expected_status
    assert status in statuses, f"status {status} not in {statuses}: {body!r}"
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["errors"], doc
    assert isinstance(doc["errors"], list) and doc["errors"], doc
    for e in doc["errors"]:
        assert set(e) == {"code", "message", "detail"}, e
        assert isinstance(e["code"], str) and isinstance(e["message"], str) and e["message"], e
    if codes:
        assert doc["errors"][0]["code"] in codes, doc
    return doc["errors"][0]


# ---------------------------------------------------------------------------------------------
# fault injection and attacks (test_faults.py, test_attacks.py, tests/load): an upstream made to misbehave,
# a canary that must never be contacted, and metahub started with extra `serve` flags.


class FaultProxy:
    """An HTTP proxy in front of a real registry that misbehaves on demand.

    `set(fault, match=REGEX, methods={...}, **options)` applies `fault` to requests whose path matches; everything
    else is forwarded verbatim. Faults: "503", "slow" (delay=s, then forward), "truncate" (half the body, then close),
    "wrong_digest" (Docker-Content-Digest replaced), "tamper" (body changed, digest header kept), "oversize"
    (a valid index of size=bytes, chunked=bool), "redirect_loop", "redirect" (location=URL), "challenge"
    (www_authenticate=VALUE), "close" (drop the connection). `require_auth=("basic"|"bearer", user, password)`
    makes the proxy an authenticating registry (bearer: it is its own token realm at /token, issuing `token`).
    """

    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.fault: str | None = None
        self.match = re.compile(r".")
        self.methods: set[str] | None = None
        self.options: dict = {}
        self.require_auth: tuple[str, str, str] | None = None
        self.token = "upstream-bearer-" + os.urandom(8).hex()
        self.hits: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real registries do

            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_GET(self):
                proxy._handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, fault: str | None, match: str = r"/manifests/", methods: set[str] | None = None, **options) -> None:
        with self.lock:
            self.fault, self.match, self.methods, self.options = fault, re.compile(match), methods, options

    def clear(self) -> None:
        self.set(None)

    def hits_matching(self, pattern: str) -> list[tuple[str, str]]:
        with self.lock:
            return [h for h in self.hits if re.search(pattern, h[1])]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the handler

    @staticmethod
    def _reply(h, status: int, headers: dict, body: bytes = b"", send_body: bool = True) -> None:
        h.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                h.send_header(k, v)
        h.send_header("Content-Length", headers.get("Content-Length", str(len(body))) if not send_body else str(len(body)))
        h.end_headers()
        if send_body and h.command != "HEAD":
            h.wfile.write(body)

    def _auth_ok(self, h) -> bool:
        kind, user, password = self.require_auth  # type: ignore[misc]
        given = h.headers.get("Authorization", "")
        if kind == "basic":
            expected = "Basic " + __import__("base64").b64encode(f"{user}:{password}".encode()).decode()
            return given == expected
        return given == f"Bearer {self.token}"

    def _handle(self, h) -> None:
        path, method = h.path, h.command
        length = int(h.headers.get("Content-Length") or 0)
        req_body = h.rfile.read(length) if length else None
        with self.lock:
            self.hits.append((method, path))
            fault = self.fault if self.match.search(path) and (self.methods is None or method in self.methods) else None
            opts = dict(self.options)
        if self.require_auth:
            kind, user, password = self.require_auth
            if kind == "bearer" and path.startswith("/token"):
                expected = "Basic " + __import__("base64").b64encode(f"{user}:{password}".encode()).decode()
                if h.headers.get("Authorization") != expected:
                    return self._reply(h, 401, {"Content-Type": "application/json"}, b'{"details":"bad credentials"}')
                body = json.dumps({"token": self.token, "expires_in": 300}).encode()
                return self._reply(h, 200, {"Content-Type": "application/json"}, body)
            if not self._auth_ok(h):
                challenge_ = 'Basic realm="fault"' if kind == "basic" else f'Bearer realm="{self.url}/token",service="fault"'
                err = b'{"errors":[{"code":"UNAUTHORIZED","message":"auth required","detail":null}]}'
                return self._reply(h, 401, {"Content-Type": "application/json", "WWW-Authenticate": challenge_}, err)
        if fault == "503":
            err = b'{"errors":[{"code":"UNAVAILABLE","message":"injected","detail":null}]}'
            return self._reply(h, 503, {"Content-Type": "application/json"}, err)
        if fault == "close":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "redirect_loop":
            return self._reply(h, 307, {"Location": f"{self.url}{path}"})
        if fault == "redirect":
            return self._reply(h, 307, {"Location": opts["location"]})
        if fault == "challenge":
            return self._reply(h, 401, {"WWW-Authenticate": opts["www_authenticate"], "Content-Type": "application/json"}, b"{}")
        if fault == "oversize":
            return self._oversize(h, opts)
        if fault == "slow":
            time.sleep(opts.get("delay", 4))
        status, headers, body = self._forward(method, path, h.headers, req_body)
        if fault == "wrong_digest":
            headers["Docker-Content-Digest"] = "sha256:" + hashlib_sha256(b"wrong" + path.encode())
        if fault == "tamper" and status == 200 and body:
            doc = json.loads(body)
            doc.setdefault("annotations", {})["tampered"] = "yes"
            body = json.dumps(doc).encode()
        if fault == "truncate" and status == 200 and method == "GET" and len(body) > 1:
            h.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if method == "HEAD":
            return self._reply(h, status, headers, b"", send_body=False)
        return self._reply(h, status, headers, body)

    def _forward(self, method: str, path: str, req_headers, body: bytes | None) -> tuple[int, dict, bytes]:
        host, port = self.target.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            headers = {k: v for k, v in req_headers.items() if k.lower() in ("accept", "content-type")}
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            keep = ("content-type", "docker-content-digest", "location", "www-authenticate", "docker-distribution-api-version", "content-length", "etag")
            out = {k: v for k, v in r.getheaders() if k.lower() in keep}
            return r.status, out, data
        finally:
            conn.close()

    def _oversize(self, h, opts: dict) -> None:
        size = opts.get("size", 5 * 1024 * 1024)
        base = {"schemaVersion": 2, "mediaType": registry_push.OCI_INDEX, "manifests": [
            {"mediaType": registry_push.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}}
        ], "annotations": {"pad": ""}}
        pad = size - len(json.dumps(base))
        base["annotations"]["pad"] = "x" * max(pad, 0)
        body = json.dumps(base).encode()
        headers = {"Content-Type": registry_push.OCI_INDEX, "Docker-Content-Digest": "sha256:" + hashlib_sha256(body)}
        if opts.get("chunked") and h.command == "GET":
            h.send_response(200)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            try:
                for i in range(0, len(body), 65536):
                    chunk = body[i : i + 65536]
                    h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                h.wfile.write(b"0\r\n\r\n")
            except OSError:
                h.close_connection = True  # metahub stopped reading: that is the point
            return None
        headers["Content-Length"] = str(len(body))
        if h.command == "HEAD":
            return self._reply(h, 200, headers, b"", send_body=False)
        try:
            self._reply(h, 200, headers, body)
        except OSError:
            h.close_connection = True
        return None


def hashlib_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class Canary:
    """A server that must never be contacted: it records every request it gets."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: list[tuple[str, str]] = []
        canary = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002
                pass

            def do_GET(self):
                canary.hits.append((self.command, self.path))
                body = b'{"token":"canary","access_token":"canary"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_POST = do_PUT = do_GET

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="canary", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class ConfiguredMetahub(Metahub):
    """A metahub started with extra `serve` flags (and environment), e.g. `--upstream-timeout 2s`."""

    serve_args: list[str] = field(default_factory=list)
    name: str = "metahub"

    def start(self, workdir: Path, name: str | None = None) -> None:  # type: ignore[override]
        self.name = name or self.name
        self.proc = Proc(
            self.name,
            [METAHUB_BIN, "serve", "--listen", self.host, "--public-url", self.url, "--upstream", self.upstream.url, "--store", self.store, *self.serve_args],
            workdir,
            env={"RUST_LOG": "info", "RUST_BACKTRACE": "1", **self.env},
        )
        wait_until(lambda: requests.get(f"{self.url}/v2/", timeout=2).status_code == 401, f"{self.name} GET /v2/ -> 401", proc=self.proc)

    def restart(self, workdir: Path) -> None:
        self.stop()
        self.start(workdir)

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace") if self.proc else ""

    def access_lines(self) -> list[dict]:
        """The access log lines of its JSON log (METAHUB_LOG_FORMAT=json), oldest first."""
        lines = []
        for text in self.log().splitlines():
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            if doc.get("target") == "metahub::access":
                lines.append(doc)
        return lines


def start_configured_metahub(workdir: Path, upstream, name: str, serve_args: list[str] | None = None, env: dict | None = None,
                             machine_types: dict | None = None, store_path: Path | None = None) -> ConfiguredMetahub:
    """A file-store metahub in front of `upstream` (anything with `.url`) with the machine types and accounts of
    MACHINE_TYPES, started with `serve_args`. Stop it when done (it is also stopped at the end of the session)."""
    _require_metahub()
    d = workdir / f"{name}-{next(_counter)}"
    d.mkdir()
    store = f"file:{store_path or d / 'store.redb'}"
    hub = ConfiguredMetahub(port=free_port(), store=store, upstream=upstream, env=dict(env or {}), serve_args=list(serve_args or []), name=d.name)
    for mt, (features, match) in (machine_types or MACHINE_TYPES).items():
        hub.put_machine_type(mt, features, match)
        hub.put_account(*creds(mt), mt)
    hub.start(workdir)
    return hub


def push_fresh_index(upstream_url: str, images: registry_push.Pushed, tag: str, repo: str = "org/app", note: str | None = None) -> tuple[bytes, str]:
    """org/app's index again under `tag`, with an annotation naming the tag (or `note`): a digest metahub has never
    seen, so no cache of it hides a fault. Returns (body, digest)."""
    doc = json.loads(images.tags[repo][0])
    doc.setdefault("annotations", {})["e2e.tag"] = note or tag
    body = registry_push.canonical(doc)
    media_type = images.tags[repo][1]
    digest = registry_push.Registry(upstream_url).push_manifest(repo, tag, body, media_type)
    return body, digest


# ---------------------------------------------------------------------------------------------
# the admin API (test_admin.py): metahub serve --admin-secret-file, on either store

ADMIN_SECRET = "e2e-admin-secret-0123456789abcdef-not-for-production"


def start_admin_metahub(workdir: Path, upstream, store_kind: str = "file", secret: str = ADMIN_SECRET) -> ConfiguredMetahub:
    """A metahub serving the admin API (`--admin-secret-file`) on the `file` or `dynamodb` (moto) store, with the
    machine types and accounts of MACHINE_TYPES. Stop it when done (it is also stopped at the end of the session)."""
    _require_metahub()
    d = workdir / f"metahub-admin-{next(_counter)}-{store_kind}"
    d.mkdir()
    secret_file = d / "admin-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    if store_kind == "file":
        store, env = f"file:{d / 'store.redb'}", {}
    elif store_kind == "dynamodb":
        store, env = f"dynamodb:{d.name}", dict(start_moto(workdir).env)
    else:
        raise ValueError(store_kind)
    hub = ConfiguredMetahub(port=free_port(), store=store, upstream=upstream, env=env,
                            serve_args=["--admin-secret-file", str(secret_file)], name=d.name)
    if store_kind == "dynamodb":
        hub.cli("store", "init")
    for mt, (features, match) in MACHINE_TYPES.items():
        hub.put_machine_type(mt, features, match)
        hub.put_account(*creds(mt), mt)
    hub.start(workdir)
    return hub


@pytest.fixture(scope="module", params=["file", "dynamodb"])
def admin_metahub(request, workdir, upstream, images) -> ConfiguredMetahub:
    """metahub with its admin API enabled, for each store kind."""
    hub = start_admin_metahub(workdir, upstream, request.param)
    yield hub
    hub.stop()


# --- a front behind a FaultProxy, shared by test_faults and test_attacks (one of each per module)


@pytest.fixture(scope="module")
def proxy(upstream, images):
    p = FaultProxy(upstream.url)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(request, workdir, proxy):
    name = "metahub-" + request.module.__name__.removeprefix("test_")
    # The tag window off: these tests count and fault each upstream answer a pull asks for.
    h = start_configured_metahub(workdir, proxy, name, ["--upstream-timeout", "2s", "--tag-ttl", "0"])
    yield h
    h.stop()


@pytest.fixture
def healthy_proxy(proxy):
    proxy.clear()
    yield
    proxy.clear()


@pytest.fixture(scope="module")
def token(hub) -> str:
    return get_token(hub, "skylake")
