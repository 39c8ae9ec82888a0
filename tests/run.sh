#!/usr/bin/env bash
# The test command: installs what the tests need (only what is missing), builds the workspace once,
# runs the Rust tests, then the end-to-end tests against real registries and clients.
# Idempotent; every step is bounded in time. Run as root on Debian (CI does: bash .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# apt-get update at most once per run, and only when something is missing
APT_UPDATED=0
apt_install() {
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" = 0 ]; then
    timeout 600 apt-get update -q
    APT_UPDATED=1
  fi
  timeout 1200 apt-get install -y -q "$@"
}

# --- Debian packages: binary -> package
declare -A APT=([docker-registry]=docker-registry [skopeo]=skopeo [podman]=podman [containerd]=containerd [ctr]=containerd)
missing=()
for bin in "${!APT[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${APT[$bin]}")
done
# skopeo/podman refuse to run without a signature policy (containers-common ships it)
[ -e /etc/containers/policy.json ] || missing+=(containers-common)
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt_install "${pkgs[@]}"
fi

# --- Python packages: import name -> pip requirement
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
  apt_install python3 python3-pip
fi
pip_missing=()
"$PY" -c 'import moto.server' >/dev/null 2>&1 || pip_missing+=('moto[server]')
"$PY" -c 'import pytest' >/dev/null 2>&1 || pip_missing+=(pytest)
"$PY" -c 'import requests' >/dev/null 2>&1 || pip_missing+=(requests)
if [ "${#pip_missing[@]}" -gt 0 ]; then
  log "pip install ${pip_missing[*]}"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  # Debian's own python3 is "externally managed" (PEP 668); a pyenv/venv python is not
  timeout 900 "$PY" -m pip install -q "${pip_missing[@]}" \
    || timeout 900 "$PY" -m pip install -q --break-system-packages "${pip_missing[@]}"
fi

# --- Rust: one debug build of every binary, then the unit and integration tests
# SKIP_CARGO=1 reuses an existing build (for iterating on the e2e harness only).
if [ "${SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --workspace --bins"
  timeout 3000 cargo build --workspace --bins
  log "cargo test --workspace"
  timeout 2400 cargo test --workspace
fi

# --- end-to-end
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export METAHUB_BIN=${METAHUB_BIN:-$(cd "$TARGET_DIR" && pwd)/debug/metahub}
log "pytest tests/e2e (METAHUB_BIN=$METAHUB_BIN)"
status=0
run_pytest() { # each folder alone: they have conftest modules of the same name
  set +e
  timeout "$1" "$PY" -m pytest "$2" -q -p no:cacheprovider
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests in $2: that is a failure here" >&2; fi
  if [ "$rc" -ne 0 ]; then status=1; fi
}
run_pytest 2400 tests/e2e
log "pytest tests/lambda (the Lambda binaries against a Runtime API stand-in, moto and docker-registry)"
run_pytest 900 tests/lambda
log "pytest tests/serverless (real clients through the edge stand-in of template.yaml to the Lambda binaries)"
run_pytest 900 tests/serverless
log "deploy checks: cfn-lint, sam validate --lint, template tests"
if ! timeout 900 bash tests/deploy/check.sh; then status=1; fi
exit "$status"
