#!/usr/bin/env bash
# Offline checks of the deployment: cfn-lint, sam validate --lint, the template tests, and
# (METAHUB_SAM_BUILD=1) a real `sam build` of the three Lambda binaries with cargo-lambda.
#
#   bash tests/deploy/check.sh                    # ~15 s once the tools are installed
#   METAHUB_SAM_BUILD=1 bash tests/deploy/check.sh   # + release builds of the three functions
#
# Installs missing tools from PyPI (cfn-lint, aws-sam-cli, pytest; cargo-lambda + ziglang for
# the build). Nothing here talks to AWS: sam validate only needs *a* region name.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 1
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0
export PIP_DISABLE_PIP_VERSION_CHECK=1

passed=0
failed=0
failures=()

need() { # command pip-packages...
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "== installing $* (for $cmd)"
  python3 -m pip install --quiet "$@" || return 1
  hash -r
  command -v "$cmd" >/dev/null 2>&1
}

step() { # name command...
  local name="$1"; shift
  local start=$SECONDS
  echo "== $name: $*"
  if "$@"; then
    passed=$((passed + 1)); echo "== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

need cfn-lint cfn-lint || { echo "cannot install cfn-lint"; exit 1; }
need sam aws-sam-cli || { echo "cannot install aws-sam-cli"; exit 1; }
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install --quiet pytest

step cfn-lint cfn-lint template.yaml
step sam-validate sam validate --lint --template-file template.yaml
step template-tests python3 -m pytest -q tests/deploy/test_template.py

sam_build() {
  local missing=()
  for crate in registry token admin; do
    [[ -f "functions/$crate/Cargo.toml" ]] || missing+=("functions/$crate")
  done
  if ((${#missing[@]})); then
    echo "sam build needs the Lambda crates ${missing[*]} (bin targets metahub-registry," \
         "metahub-token, metahub-admin); they are not in this workspace yet" >&2
    return 1
  fi
  need cargo-lambda cargo-lambda ziglang || { echo "cannot install cargo-lambda" >&2; return 1; }
  local out="${TMPDIR:-/tmp}/metahub-sam-build"
  rm -rf "$out"
  # Only the x86_64 Rust target is installed here; arm64 is a deploy-time choice.
  sam build --config-file infra/samconfig.toml --template-file template.yaml \
    --build-dir "$out" --parameter-overrides Architecture=x86_64 || return 1
  local fn
  for fn in RegistryFunction TokenFunction AdminFunction; do
    [[ -x "$out/$fn/bootstrap" ]] || { echo "no $out/$fn/bootstrap" >&2; return 1; }
    ls -l "$out/$fn/bootstrap"
  done
}

if [[ "${METAHUB_SAM_BUILD:-0}" == 1 ]]; then
  step sam-build sam_build
fi

echo
((failed)) && echo "failed: ${failures[*]}"
echo "deploy checks: $passed passed, $failed failed"
((failed == 0))
