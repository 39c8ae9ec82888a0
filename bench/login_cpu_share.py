"""Login (argon2id verify) time at Lambda memory sizes, emulated with a CPU quota: Lambda gives a function
memory/1769 of a vCPU, so `metahub serve` runs in a cgroup (v1 `cpu`, needs root) whose CFS quota is that share.
Sizes the token function (template.yaml TokenMemorySize; docs/deploy.md "Sizing").

    METAHUB_BIN=target/release/metahub python3 bench/login_cpu_share.py
"""

import os
import socket
import statistics
import subprocess
import tempfile
import time

import requests

BIN = os.environ.get("METAHUB_BIN", "target/release/metahub")
CGROUP = "/sys/fs/cgroup/cpu/metahub-login-bench"
SIZES_MB = [128, 256, 512, 1024, 1769]


def main() -> None:
    tmp = tempfile.mkdtemp()
    store = f"file:{tmp}/store.redb"
    subprocess.run([BIN, "machine-type", "put", "skylake", "--feature", "cpu:skylake", "--store", store], check=True, capture_output=True)
    subprocess.run([BIN, "account", "put", "m", "--machine-type", "skylake", "--password-stdin", "--store", store],
                   input=b"pw-0123456789", check=True, capture_output=True)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    serve = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--upstream", "http://127.0.0.1:1", "--store", store],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    session = requests.Session()
    for _ in range(100):
        try:
            session.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)

    def login() -> float:
        start = time.perf_counter()
        r = session.get(f"http://127.0.0.1:{port}/token", params={"service": "metahub"}, auth=("m", "pw-0123456789"), timeout=60)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    os.makedirs(CGROUP, exist_ok=True)
    try:
        with open(f"{CGROUP}/cgroup.procs", "w") as f:
            f.write(str(serve.pid))
        for mb in SIZES_MB:
            with open(f"{CGROUP}/cpu.cfs_period_us", "w") as f:
                f.write("100000")
            with open(f"{CGROUP}/cpu.cfs_quota_us", "w") as f:
                f.write(str(int(100000 * mb / 1769)))
            login()
            times = sorted(login() for _ in range(8 if mb < 512 else 20))
            median = statistics.median(times)
            print(f"{mb:5d} MB  vCPU share {mb / 1769:.3f}  login median {median * 1000:5.0f} ms  "
                  f"min {times[0] * 1000:5.0f} ms  GB-s per login {mb / 1024 * median:.3f}")
    finally:
        serve.terminate()
        serve.wait()
        os.rmdir(CGROUP)


if __name__ == "__main__":
    main()
