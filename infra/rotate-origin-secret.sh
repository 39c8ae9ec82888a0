#!/usr/bin/env bash
# Rotate the X-Origin-Verify secret CloudFront sends to the functions, without an outage.
#
#   infra/rotate-origin-secret.sh [--region R] [--stack NAME] [--param NAME] [--secondary-region R2]
#                                 [--no-stack-update]
#
# The parameter is the stack's own (its OriginSecretParameter output), unless --param names one.
# --secondary-region: the second region's stack reads its own copy of the parameter; the same
# value is written there too (before the stack update, so both regions accept it first).
#
# 1. Writes a new random value to the SSM String parameter (a new parameter version V).
# 2. Updates the stack with OriginSecretParameterVersion=V (same template, every other
#    parameter kept): CloudFront's origin header resolves version V, and the functions -
#    restarted by the changed environment - accept V and V-1. Edges still sending V-1 while
#    the distribution propagates are therefore let through; nothing is refused at any moment.
# 3. Waits for the stack update. The old value stops working at the next rotation.
#
# --no-stack-update does step 1 only (then run infra/deploy.sh, which pins the latest version).
# Uses the standard AWS environment (credentials, AWS_ENDPOINT_URL for moto/LocalStack).
set -euo pipefail

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
stack="metahub"
param=""
secondary_region=""
update=1

die() { echo "rotate-origin-secret.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --stack) stack="$2"; shift 2 ;;
    --param) param="$2"; shift 2 ;;
    --secondary-region) secondary_region="$2"; shift 2 ;;
    --no-stack-update) update=0; shift ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ -n "$region" ]] || die "no region: pass --region or set AWS_REGION"
command -v aws >/dev/null || die "aws CLI not found on PATH"
aws_() { aws --region "$region" "$@"; }

if [[ -z "$param" ]]; then
  # The stack's own parameter: its output, else (a stack from before the output) its parameter or default name.
  param=$(aws_ cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='OriginSecretParameter'].OutputValue | [0]" --output text 2>/dev/null || true)
  if [[ -z "$param" || "$param" == None ]]; then
    param=$(aws_ cloudformation describe-stacks --stack-name "$stack" \
      --query "Stacks[0].Parameters[?ParameterKey=='OriginSecretParameterName'].ParameterValue | [0]" --output text 2>/dev/null || true)
  fi
  [[ -n "$param" && "$param" != None ]] || param="/metahub/$stack/origin-verify"
fi

type=$(aws_ ssm get-parameter --name "$param" --query Parameter.Type --output text) \
  || die "cannot read $param (deploy first: infra/deploy.sh creates it)"
[[ "$type" == String ]] || die "$param is a $type; CloudFront can only resolve a String parameter"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The value goes through a file so it is never on a command line (ps) or in a log.
(umask 077; python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(48))' > "$work/value")
version=$(aws_ ssm put-parameter --name "$param" --type String --overwrite --value "file://$work/value" \
  --query Version --output text)
echo "origin secret $param is now version $version (the functions also accept version $((version - 1)))"
if [[ -n "$secondary_region" ]]; then
  # The second region's functions read their own copy (its version numbers are its own: they accept its latest
  # and the one before, as the template leaves their version unpinned).
  aws --region "$secondary_region" ssm put-parameter --name "$param" --type String --overwrite \
    --value "file://$work/value" >/dev/null
  echo "copied to $secondary_region (its stack reads that copy)"
fi

if [[ $update == 0 ]]; then
  echo "stack not updated: run infra/deploy.sh (it pins version $version)"
  exit 0
fi

# Every parameter as it is, except the version. (A word list: bash 3.2 on macOS has no array readers.)
keys=$(aws_ cloudformation describe-stacks --stack-name "$stack" \
  --query 'Stacks[0].Parameters[].ParameterKey' --output text | tr '\t' ' ')
[[ -n "$keys" ]] || die "stack $stack not found or has no parameters"
params=()
for key in $keys; do
  [[ "$key" == OriginSecretParameterVersion ]] && continue
  params+=("ParameterKey=$key,UsePreviousValue=true")
done
params+=("ParameterKey=OriginSecretParameterVersion,ParameterValue=$version")

aws_ cloudformation update-stack --stack-name "$stack" --use-previous-template \
  --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameters "${params[@]}" >/dev/null
echo "updating stack $stack (CloudFront propagation takes a few minutes; both values are accepted meanwhile)"
aws_ cloudformation wait stack-update-complete --stack-name "$stack"
echo "done: CloudFront sends version $version"
