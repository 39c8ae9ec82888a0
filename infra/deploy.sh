#!/usr/bin/env bash
# Deploy MetaHub with SAM: create the two SSM parameters if missing, sam build, sam deploy.
#
#   infra/deploy.sh [--region R] [--stack NAME] [--arch x86_64|arm64]
#                   [--domain registry.example.com --cert-arn arn:aws:acm:us-east-1:...]
#                   [--upstream URL] [--upstream-credentials-param NAME] [--existing-table NAME]
#                   [--token-rate-limit N | --web-acl-arn ARN] [--alarm-topic ARN]
#                   [--reserved-concurrency N] [--access-log-bucket B.s3.amazonaws.com]
#                   [--secondary-region R] [--secondary-registry-url URL] [--no-distribution]
#                   [--smoke-login LOGIN] [--yes] [--no-build]
#
# --smoke-login: after the deploy, run infra/smoke.sh as that account (password in
# METAHUB_SMOKE_PASSWORD, or typed when asked; never on a command line).
# --secondary-region: the SSM parameters are copied there (same values), and a new table is a
# global table with a replica there. Deploy the second region's stack with --no-distribution
# --existing-table <TableName> --region R, then this one again with --secondary-registry-url.
#
# Needs: aws CLI, sam CLI, cargo + cargo-lambda (for sam build), openssl or python3.
# One pass: the token realm follows the viewer's host (CloudFront Function -> X-Forwarded-Host),
# so neither the CloudFront domain nor the custom domain is configured anywhere. CloudFront is
# pinned to the origin secret's current SSM version (see infra/rotate-origin-secret.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
config="$here/samconfig.toml"

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
stack="metahub"
arch="x86_64"
domain=""
cert_arn=""
token_rate_limit=""
upstream=""
upstream_credentials=""
existing_table=""
signing_param=""
origin_param=""
alarm_topic=""
reserved=""
web_acl=""
access_logs=""
secondary_region=""
secondary_registry_url=""
distribution=true
smoke_login=""
confirm=(--confirm-changeset)
build=1

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "deploy.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --stack) stack="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --domain) domain="$2"; shift 2 ;;
    --cert-arn) cert_arn="$2"; shift 2 ;;
    --token-rate-limit) token_rate_limit="$2"; shift 2 ;;
    --upstream) upstream="$2"; shift 2 ;;
    --upstream-credentials-param) upstream_credentials="$2"; shift 2 ;;
    --existing-table) existing_table="$2"; shift 2 ;;
    --signing-key-param) signing_param="$2"; shift 2 ;;
    --origin-secret-param) origin_param="$2"; shift 2 ;;
    --alarm-topic) alarm_topic="$2"; shift 2 ;;
    --reserved-concurrency) reserved="$2"; shift 2 ;;
    --web-acl-arn) web_acl="$2"; shift 2 ;;
    --access-log-bucket) access_logs="$2"; shift 2 ;;
    --secondary-region) secondary_region="$2"; shift 2 ;;
    --secondary-registry-url) secondary_registry_url="$2"; shift 2 ;;
    --no-distribution) distribution=false; shift ;;
    --smoke-login) smoke_login="$2"; shift 2 ;;
    --yes) confirm=(--no-confirm-changeset); shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# Bash 3.2 (macOS) runs this script: no bash 4 array builtins, no "${empty[@]}" under set -u.
[[ -n "$region" ]] || die "no region: pass --region or set AWS_REGION"
[[ -z "$reserved" || "$reserved" =~ ^[0-9]+$ ]] || die "--reserved-concurrency takes a number"
if [[ -n "$web_acl" && -n "$token_rate_limit" ]]; then die "--web-acl-arn or --token-rate-limit, not both"; fi
[[ "$arch" == x86_64 || "$arch" == arm64 ]] || die "--arch must be x86_64 or arm64"
if [[ -n "$domain" && -z "$cert_arn" ]]; then die "--domain needs --cert-arn (ACM certificate in us-east-1)"; fi
for tool in aws sam; do command -v "$tool" >/dev/null || die "$tool not found on PATH"; done
if [[ $build == 1 ]]; then
  command -v cargo-lambda >/dev/null || die "cargo-lambda not found (pip install cargo-lambda ziglang, or see cargo-lambda docs)"
fi

aws_() { aws --region "$region" "$@"; }

stack_parameter() { # key -> the deployed stack's value, or empty (no stack yet)
  aws_ cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Parameters[?ParameterKey=='$1'].ParameterValue | [0]" --output text 2>/dev/null \
    | sed 's/^None$//' || true
}
# Parameter names: as given, else what the stack already uses (a stack from before per-stack names keeps
# /metahub/signing-key), else the stack's own /metahub/<stack>/... (the template's default).
[[ -n "$signing_param" ]] || signing_param=$(stack_parameter SigningKeyParameterName)
[[ -n "$signing_param" ]] || signing_param="/metahub/$stack/signing-key"
[[ -n "$origin_param" ]] || origin_param=$(stack_parameter OriginSecretParameterName)
[[ -n "$origin_param" ]] || origin_param="/metahub/$stack/origin-verify"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

random_secret() {
  if command -v openssl >/dev/null; then openssl rand -base64 48 | tr -d '\n'
  else python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(48))'; fi
}

# Type of an SSM parameter, or empty when it does not exist (other errors abort).
param_type() {
  local out
  if out=$(aws_ ssm describe-parameters --parameter-filters "Key=Name,Values=$1" \
             --query 'Parameters[0].Type' --output text 2>&1); then
    [[ "$out" == "None" ]] && echo "" || echo "$out"
  else
    die "cannot query SSM parameter $1: $out"
  fi
}

copy_to_secondary() { # name type description: the second region reads its own copy of each secret
  [[ -n "$secondary_region" ]] || return 0
  if [[ ! -s "$work/value" ]]; then
    # an existing parameter: copy its current value, through a file again
    (umask 077; aws_ ssm get-parameter --name "$1" --with-decryption --query Parameter.Value --output text > "$work/value")
  fi
  aws --region "$secondary_region" ssm put-parameter --name "$1" --type "$2" --description "$3" --overwrite \
    --value "file://$work/value" >/dev/null
  echo "copied $1 to $secondary_region"
}

ensure_param() { # name type description
  local name="$1" type="$2" desc="$3" have
  have=$(param_type "$name")
  if [[ -z "$have" ]]; then
    echo "creating SSM $type parameter $name"
    # The value goes through a file so it is never on a command line (ps) or in a log.
    (umask 077; random_secret > "$work/value")
    aws_ ssm put-parameter --name "$name" --type "$type" --description "$desc" \
      --value "file://$work/value" >/dev/null
    copy_to_secondary "$name" "$type" "$desc"
    rm -f "$work/value"
  elif [[ "$have" != "$type" ]]; then
    die "SSM parameter $name is a $have, expected $type (see docs/deploy.md)"
  else
    echo "SSM parameter $name exists ($type)"
    if [[ -n "$secondary_region" ]]; then rm -f "$work/value"; copy_to_secondary "$name" "$type" "$desc"; rm -f "$work/value"; fi
  fi
}

if [[ "$distribution" == false ]]; then
  # A second region's stack must use the primary's values: never make new random ones here.
  for name in "$signing_param" "$origin_param"; do
    [[ -n "$(param_type "$name")" ]] || die "no SSM parameter $name in $region: deploy the primary stack with
  --secondary-region $region first (it copies its parameters here), then this one"
  done
fi
ensure_param "$signing_param" SecureString "MetaHub token signing key"
# String, not SecureString: CloudFront origin headers can only resolve plain ssm references.
ensure_param "$origin_param" String "MetaHub X-Origin-Verify value (CloudFront -> functions)"
if [[ -n "$upstream_credentials" ]]; then
  # Made by the operator (it holds a real account): only checked here.
  [[ "$(param_type "$upstream_credentials")" == SecureString ]] || die "create $upstream_credentials first:
  aws ssm put-parameter --type SecureString --name $upstream_credentials --value 'user:password'"
fi

stack_output() { # key -> value or empty
  aws_ cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text 2>/dev/null \
    | sed 's/^None$//' || true
}

# Lambda concurrency: a fleet rollout is about 10 requests per node, and a new account's quota can be as low as 10
# concurrent executions. Reserving concurrency needs 100 left unreserved in the account.
check_concurrency() {
  local limits total unreserved need
  limits=$(aws_ lambda get-account-settings \
    --query '[AccountLimit.ConcurrentExecutions, AccountLimit.UnreservedConcurrentExecutions]' --output text 2>/dev/null) \
    || { echo "warning: could not read the Lambda concurrency quota (lambda:GetAccountSettings)"; return 0; }
  read -r total unreserved <<<"$limits"
  if [[ "$total" =~ ^[0-9]+$ ]] && ((total < 1000)); then
    echo "warning: the account's Lambda concurrency quota in $region is $total. A rollout to N nodes sends about 10N"
    echo "         requests in a burst; above the quota they are throttled (429, clients retry). Ask for more:"
    echo "         aws service-quotas request-service-quota-increase --service-code lambda --quota-code L-B99A9384 --desired-value 1000"
  fi
  if [[ -n "$reserved" && "$reserved" != 0 && "$unreserved" =~ ^[0-9]+$ ]]; then
    need=$((2 * reserved + 100))
    if ((unreserved < need)); then
      echo "warning: --reserved-concurrency $reserved reserves $((2 * reserved)) (registry + token) and the account must keep"
      echo "         100 unreserved: $need needed, $unreserved unreserved now (less what this stack already reserves)."
      echo "         The deploy fails unless the quota is raised or the value lowered."
    fi
  fi
}
check_concurrency

# CloudFront sends the version it is pinned to; the functions accept it and the one before.
origin_version=$(aws_ ssm get-parameter --name "$origin_param" --query Parameter.Version --output text)

overrides=(
  "Architecture=$arch"
  "SigningKeyParameterName=$signing_param"
  "OriginSecretParameterName=$origin_param"
  "OriginSecretParameterVersion=$origin_version"
)
[[ -n "$domain" ]] && overrides+=("DomainName=$domain" "CertificateArn=$cert_arn")
[[ -n "$upstream" ]] && overrides+=("UpstreamUrl=$upstream")
[[ -n "$upstream_credentials" ]] && overrides+=("UpstreamCredentialsParameterName=$upstream_credentials")
[[ -n "$existing_table" ]] && overrides+=("ExistingTableName=$existing_table")
[[ -n "$token_rate_limit" ]] && overrides+=("TokenRateLimit=$token_rate_limit")
[[ -n "$web_acl" ]] && overrides+=("WebAclArn=$web_acl")
[[ -n "$alarm_topic" ]] && overrides+=("AlarmTopicArn=$alarm_topic")
[[ -n "$reserved" ]] && overrides+=("ReservedConcurrency=$reserved")
[[ -n "$access_logs" ]] && overrides+=("AccessLogBucket=$access_logs")
[[ -n "$secondary_region" ]] && overrides+=("SecondaryRegion=$secondary_region")
[[ -n "$secondary_registry_url" ]] && overrides+=("SecondaryRegistryFunctionUrl=$secondary_registry_url")
overrides+=("CreateDistribution=$distribution")
if [[ "$distribution" == false ]]; then
  # The second region's functions accept the latest origin secret of their own copy and the one before.
  overrides=("${overrides[@]/OriginSecretParameterVersion=*/OriginSecretParameterVersion=}")
fi

cd "$root"
if [[ $build == 1 ]]; then
  sam build --config-file "$config" --parameter-overrides "Architecture=$arch"
fi

sam deploy --config-file "$config" --region "$region" --stack-name "$stack" \
  "${confirm[@]}" --parameter-overrides "${overrides[@]}"

echo
aws_ cloudformation describe-stacks --stack-name "$stack" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
[[ "$distribution" == true ]] || { echo "second-region stack: pass its RegistryFunctionUrl to the primary's --secondary-registry-url"; exit 0; }
public_url=$(stack_output PublicUrl)
function_url=$(stack_output RegistryFunctionUrl)
if [[ -z "$smoke_login" ]]; then
  echo "next: infra/seed.sh --region $region --stack $stack   (example machine types and an account)"
  echo "then: METAHUB_SMOKE_LOGIN=<login> METAHUB_SMOKE_PASSWORD=<password> infra/smoke.sh $public_url --function-url $function_url"
  echo "      (or deploy with --smoke-login <login>, which runs it)"
  exit 0
fi
if [[ -z "${METAHUB_SMOKE_PASSWORD:-}" ]]; then
  [[ -t 0 ]] || die "--smoke-login needs METAHUB_SMOKE_PASSWORD or a terminal to type it"
  printf 'password of %s: ' "$smoke_login" >&2
  IFS= read -rs METAHUB_SMOKE_PASSWORD; echo >&2
fi
echo "smoke test of $public_url as $smoke_login"
# The password travels in the environment of smoke.sh only (never an argument: ps shows those).
METAHUB_SMOKE_LOGIN="$smoke_login" METAHUB_SMOKE_PASSWORD="$METAHUB_SMOKE_PASSWORD" \
  bash "$here/smoke.sh" "$public_url" --function-url "$function_url"
