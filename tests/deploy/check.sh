#!/usr/bin/env bash
# Offline checks of the deployment: cfn-lint, sam validate --lint, the template tests, and
# (METAHUB_SAM_BUILD=1) a real `sam build` of the three Lambda binaries with cargo-lambda.
#
#   bash tests/deploy/check.sh                    # ~15 s once the tools are installed
#   METAHUB_SAM_BUILD=1 bash tests/deploy/check.sh   # + release builds of the three functions
#
# Installs missing tools with tests/install.sh (cfn-lint, aws-sam-cli, pytest; cargo-lambda + ziglang for
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

# the tools, from tests/install.sh (the one list); tests/run.sh has run it already and says so with SKIP_INSTALL=1
install_groups=(deploy)
[[ "${METAHUB_SAM_BUILD:-0}" != 1 ]] || install_groups+=(sam-build)
[[ "${SKIP_INSTALL:-0}" == 1 ]] || bash tests/install.sh "${install_groups[@]}" || exit 1

step cfn-lint cfn-lint template.yaml
step sam-validate sam validate --lint --template-file template.yaml
# -rs and skip_policy: a skipped template test fails the checks (tests/skip_policy.py)
step template-tests env PYTHONPATH="$root/tests" python3 -m pytest -q -rs -p skip_policy tests/deploy/test_template.py tests/deploy/test_iam_check.py

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
