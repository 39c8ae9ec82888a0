#!/usr/bin/env bash
# LocalStack ready hook: the MetaHub table (the schema of template.yaml and of
# `metahub store init`, functions/store-dynamodb) plus demo data.
# Runs inside the container, where awslocal talks to this LocalStack. Idempotent.
# shellcheck disable=SC2016 # the PHC hashes below are literal: their $ are not expansions
set -euo pipefail

table="${METAHUB_TABLE:-metahub}"

if awslocal dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
  echo "metahub: table $table exists"
else
  awslocal dynamodb create-table \
    --table-name "$table" \
    --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S AttributeName=machineType,AttributeType=S \
    --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE \
    --global-secondary-indexes '[{"IndexName":"byMachineType","KeySchema":[{"AttributeName":"machineType","KeyType":"HASH"}],"Projection":{"ProjectionType":"KEYS_ONLY"}}]' \
    --sse-specification Enabled=true >/dev/null
  awslocal dynamodb wait table-exists --table-name "$table"
  awslocal dynamodb update-time-to-live --table-name "$table" \
    --time-to-live-specification Enabled=true,AttributeName=ttl >/dev/null
  awslocal dynamodb update-continuous-backups --table-name "$table" \
    --point-in-time-recovery-specification PointInTimeRecoveryEnabled=true >/dev/null || true
  echo "metahub: created table $table"
fi

# Parameters the functions read at init (local demo values, not secrets of anything real).
awslocal ssm put-parameter --overwrite --name /metahub/signing-key --type SecureString \
  --value "localstack-demo-signing-key-0123456789abcdef0123456789abcdef" >/dev/null
awslocal ssm put-parameter --overwrite --name /metahub/origin-verify --type String \
  --value "localstack-demo-origin-verify" >/dev/null

put() { awslocal dynamodb put-item --table-name "$table" --item "$1" >/dev/null; }

machine_type() { # name match users(comma-separated, may be empty) feature...
  local name="$1" match="$2" users="$3"; shift 3
  local list="" f u set=""
  for f in "$@"; do list="${list:+$list,}{\"S\":\"$f\"}"; done
  # `users` lists the accounts of this type (DynamoDB sets cannot be empty: omit it then).
  for u in ${users//,/ }; do set="${set:+$set,}\"$u\""; done
  local item="{\"pk\":{\"S\":\"MT#$name\"},\"sk\":{\"S\":\"MT\"},\"features\":{\"L\":[$list]},\"match\":{\"S\":\"$match\"}"
  [[ -n "$set" ]] && item="$item,\"users\":{\"SS\":[$set]}"
  put "$item}"
}

account() { # login machine-type argon2id-phc
  put "{\"pk\":{\"S\":\"ACCT#$1\"},\"sk\":{\"S\":\"ACCT\"},\"machineType\":{\"S\":\"$2\"},\"passwordHash\":{\"S\":\"$3\"}}"
}

machine_type skylake best fleet-skylake cpu:skylake
machine_type cascadelake best fleet-cascadelake cpu:cascadelake
machine_type v100 best fleet-v100 cpu:skylake_avx512 nvcap:7.0
machine_type c5-exact exact "" cpu:skylake_avx512 instType:c5

# Demo passwords (argon2id, m=19456,t=2,p=1 - the argon2 crate's defaults):
#   fleet-skylake / skylake-pass-2024, fleet-cascadelake / cascadelake-pass-2024, fleet-v100 / v100-pass-2024
account fleet-skylake skylake '$argon2id$v=19$m=19456,t=2,p=1$iSMLc3tXcCExECyGA3dpDQ$5OIt6EisxzFqL03iHCV5AHk19ZxHcX1FDM0D46gqvkg'
account fleet-cascadelake cascadelake '$argon2id$v=19$m=19456,t=2,p=1$IQ2t6gtEiXFoqdanYxbHCg$PZ5TVDx4UM8dNhWBxMMVfhw83x9rpP5ZjDfSMT2Y9RE'
account fleet-v100 v100 '$argon2id$v=19$m=19456,t=2,p=1$SGxDPCfxbLaCsvVS5ylu7A$82nKVLNpoBRecjIJN6sxphOlfxS1EFkPD5N3r7+mI8Q'

echo "metahub: seeded $table (4 machine types, 3 accounts)"
