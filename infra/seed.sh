#!/usr/bin/env bash
# Seed a deployed MetaHub with example machine types and one account per type.
#
#   infra/seed.sh [--region R] [--stack NAME | --table TABLE]
#
# Uses the metahub CLI against the DynamoDB table directly (--store dynamodb:TABLE), with
# the standard AWS environment (credentials, region, AWS_ENDPOINT_URL for LocalStack/moto).
# Passwords: METAHUB_SEED_PASSWORD if set (same for every account), else a random one per
# account, printed once at the end - store them, they are kept only as argon2id hashes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
stack="metahub"
table=""

die() { echo "seed.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --stack) stack="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ -n "$region" ]] || die "no region: pass --region or set AWS_REGION"
export AWS_REGION="$region" AWS_DEFAULT_REGION="$region"

if [[ -z "$table" ]]; then
  command -v aws >/dev/null || die "aws CLI not found (or pass --table)"
  table=$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='TableName'].OutputValue | [0]" --output text)
  [[ -n "$table" && "$table" != None ]] || die "stack $stack has no TableName output"
fi
store="dynamodb:$table"

# The CLI: on PATH, else a release build of this workspace.
if command -v metahub >/dev/null; then
  metahub=(metahub)
elif [[ -x "$root/target/release/metahub" ]]; then
  metahub=("$root/target/release/metahub")
else
  metahub=(cargo run --quiet --release --manifest-path "$root/Cargo.toml" -p metahub --)
fi

echo "seeding $store"
# Machine types: CPU microarchitectures (archspec names) and a GPU compute capability.
"${metahub[@]}" machine-type put skylake     --feature cpu:skylake               --store "$store"
"${metahub[@]}" machine-type put cascadelake --feature cpu:cascadelake           --store "$store"
"${metahub[@]}" machine-type put zen3        --feature cpu:zen3                  --store "$store"
"${metahub[@]}" machine-type put graviton3   --feature cpu:neoverse_v1           --store "$store"
"${metahub[@]}" machine-type put v100        --feature cpu:skylake_avx512 --feature nvcap:7.0 --store "$store"
"${metahub[@]}" machine-type put c5-exact    --feature cpu:skylake_avx512 --feature instType:c5 --match exact --store "$store"

created=""  # "login password" lines (bash 3.2, macOS: no associative arrays)
for mt in skylake cascadelake zen3 graviton3 v100; do
  login="fleet-$mt"
  password="${METAHUB_SEED_PASSWORD:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')}"
  printf '%s' "$password" | "${metahub[@]}" account put "$login" --machine-type "$mt" --password-stdin --store "$store"
  created="$created$login $password
"
done

"${metahub[@]}" machine-type list --store "$store"
"${metahub[@]}" account list --store "$store"

if [[ -z "${METAHUB_SEED_PASSWORD:-}" ]]; then
  echo
  echo "accounts created (passwords shown once):"
  printf '%s' "$created" | while read -r login password; do printf '  %-20s %s\n' "$login" "$password"; done
fi
