#!/usr/bin/env bash
# Deploy MetaHub with SAM: create the two SSM parameters if missing, sam build, sam deploy.
#
#   infra/deploy.sh [--region R] [--stack NAME] [--arch x86_64|arm64]
#                   [--domain registry.example.com --cert-arn arn:aws:acm:us-east-1:...]
#                   [--upstream URL] [--upstream-credentials-param NAME] [--existing-table NAME]
#                   [--token-rate-limit N] [--yes] [--no-build]
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
signing_param="/metahub/signing-key"
origin_param="/metahub/origin-verify"
confirm=(--confirm-changeset)
build=1

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
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
    --yes) confirm=(--no-confirm-changeset); shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ -n "$region" ]] || die "no region: pass --region or set AWS_REGION"
[[ "$arch" == x86_64 || "$arch" == arm64 ]] || die "--arch must be x86_64 or arm64"
if [[ -n "$domain" && -z "$cert_arn" ]]; then die "--domain needs --cert-arn (ACM certificate in us-east-1)"; fi
for tool in aws sam; do command -v "$tool" >/dev/null || die "$tool not found on PATH"; done
if [[ $build == 1 ]]; then
  command -v cargo-lambda >/dev/null || die "cargo-lambda not found (pip install cargo-lambda ziglang, or see cargo-lambda docs)"
fi

aws_() { aws --region "$region" "$@"; }

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

ensure_param() { # name type description
  local name="$1" type="$2" desc="$3" have
  have=$(param_type "$name")
  if [[ -z "$have" ]]; then
    echo "creating SSM $type parameter $name"
    # The value goes through a file so it is never on a command line (ps) or in a log.
    (umask 077; random_secret > "$work/value")
    aws_ ssm put-parameter --name "$name" --type "$type" --description "$desc" \
      --value "file://$work/value" >/dev/null
    rm -f "$work/value"
  elif [[ "$have" != "$type" ]]; then
    die "SSM parameter $name is a $have, expected $type (see docs/deploy.md)"
  else
    echo "SSM parameter $name exists ($type)"
  fi
}

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

cd "$root"
if [[ $build == 1 ]]; then
  sam build --config-file "$config" --parameter-overrides "Architecture=$arch"
fi

sam deploy --config-file "$config" --region "$region" --stack-name "$stack" \
  "${confirm[@]}" --parameter-overrides "${overrides[@]}"

echo
aws_ cloudformation describe-stacks --stack-name "$stack" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
echo "next: infra/seed.sh --region $region --stack $stack   (example machine types and an account)"
echo "then: infra/smoke.sh $(stack_output PublicUrl) --function-url $(stack_output RegistryFunctionUrl)"
