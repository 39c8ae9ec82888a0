#!/usr/bin/env bash
# The test command: checks and installs what the tests need (tests/install.sh), builds the workspace once,
# runs the Rust tests, then the end-to-end tests against real registries and clients.
# Idempotent; every step is bounded in time. Run as root on Debian (CI does: bash .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# --- what the tests need (tests/install.sh, the one list): every name checked in its registry, then only the
# missing ones installed. The deploy checks' tools too, so check.sh below need not check again.
log "bash tests/install.sh test deploy"
bash tests/install.sh test deploy
PY=${PYTHON:-python3}

# --- Rust: one debug build of every binary, then the unit and integration tests
# SKIP_CARGO=1 reuses an existing build (for iterating on the e2e harness only).
if [ "${SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --workspace --bins"
  timeout 3000 cargo build --workspace --bins
  log "cargo test --workspace"
  timeout 2400 cargo test --workspace
  # The fuzz targets are run by fuzz/run.sh, not here, but they must keep building: they are outside the workspace
  # and once broke unseen. Built without sanitizers, sharing the workspace's target folder: well under a minute.
  log "cargo build --manifest-path fuzz/Cargo.toml --bins"
  timeout 900 cargo build --manifest-path fuzz/Cargo.toml --bins --locked --target-dir "${CARGO_TARGET_DIR:-target}"
fi

# --- end-to-end
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export METAHUB_BIN=${METAHUB_BIN:-$(cd "$TARGET_DIR" && pwd)/debug/metahub}
log "pytest tests/e2e (METAHUB_BIN=$METAHUB_BIN)"
status=0
# -rs lists every skip; skip_policy (tests/skip_policy.py) fails the run on a skip that is not allowed there;
# programs (tests/programs.py) ends it at once when a program install.sh declares is missing, and fails a test
# that starts one it does not declare
export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
run_pytest() { # each folder alone: they have conftest modules of the same name
  set +e
  timeout "$1" "$PY" -m pytest "$2" -q -rs -p no:cacheprovider -p skip_policy -p programs
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests in $2: that is a failure here" >&2; fi
  if [ "$rc" -ne 0 ]; then status=1; fi
}
run_pytest 2400 tests/e2e
log "pytest tests/lambda (the Lambda binaries against a Runtime API stand-in, moto and docker-registry)"
run_pytest 900 tests/lambda
log "pytest tests/ui (the admin page in Debian's Chromium, driven by selenium)"
run_pytest 600 tests/ui
log "pytest tests/serverless (real clients through the edge stand-in of template.yaml to the Lambda binaries)"
run_pytest 900 tests/serverless
log "deploy checks: cfn-lint, sam validate --lint, template tests"
if ! SKIP_INSTALL=1 timeout 900 bash tests/deploy/check.sh; then status=1; fi
exit "$status"
